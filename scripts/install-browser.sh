#!/usr/bin/env bash
# The browser the web app's tests drive (tests/test_app_browser.py): Debian's chromium, which
# Playwright (a dev dependency) launches by path. Nothing is downloaded from Playwright's own CDN.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  echo "install-browser: chromium is here: $(chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; install Chromium and set PAIRLINE_CHROMIUM=/path/to/chromium" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "install-browser: installed $(chromium --version)"
