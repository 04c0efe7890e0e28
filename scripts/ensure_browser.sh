#!/usr/bin/env bash
# The UI tests (tests/ui) drive the machine's Chromium through chromedriver: Debian's
# `chromium` and `chromium-driver` (a test tool's own browser download does not work here).
# Installed when missing and this runs as root (CI does); otherwise it says what to install.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver (the UI tests' browser)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "the UI tests need Chromium and its driver: sudo apt-get install chromium chromium-driver" >&2
fi
