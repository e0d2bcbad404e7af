#!/usr/bin/env bash
# Installs the headless browser the inspector's tests drive (tests/test_inspect_browser.py):
# Debian's chromium and chromium-driver (which depends on chromium: its chromedriver proves both).
set -euo pipefail
bash "$(dirname "$0")/apt_install.sh" chromedriver chromium chromium-driver
