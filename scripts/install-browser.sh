#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the dashboard's browser test (make test runs this).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo > /dev/null || { echo "install chromium and chromium-driver (Debian packages) as root" >&2; exit 1; }
    sudo="sudo"
fi
echo "==> installing chromium and chromium-driver (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver > /dev/null
