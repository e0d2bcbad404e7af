#!/usr/bin/env bash
# apt-get install the Debian packages named after the command that proves them installed:
#   bash tests/apt_install.sh <command> <package>...
# Does nothing when <command> is there already (seconds on a machine that ran it once). Needs root
# or sudo. Used by the install steps CI runs (tests/install_browser.sh, tests/install_redis.sh).
set -euo pipefail
probe="$1"; shift
if command -v "$probe" >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "$@"
