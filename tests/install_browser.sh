#!/usr/bin/env bash
# Installs the headless browser the inspector's tests drive (tests/test_inspect_browser.py):
# Debian's chromium and chromium-driver. Does nothing when both are there already (seconds on a
# machine that ran it once). Needs root or sudo for apt-get.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends chromium chromium-driver
