#!/usr/bin/env bash
# Installs the Redis server the shared-store tests start on loopback (tests/test_store_replicas.py):
# Debian's redis-server. Does nothing when it is there already (seconds on a machine that ran it
# once). Needs root or sudo for apt-get. The tests start their own server; the package's service
# is not needed and is stopped if apt-get started it.
set -euo pipefail
if command -v redis-server >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends redis-server
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    $sudo systemctl stop redis-server || true
fi
