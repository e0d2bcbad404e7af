#!/usr/bin/env bash
# Installs the Redis server the shared-store tests start on loopback (tests/test_store_replicas.py,
# tests/test_store_faults.py): Debian's redis-server. The tests start servers of their own; the
# package's service is not needed.
set -euo pipefail
bash "$(dirname "$0")/apt_install.sh" redis-server redis-server
