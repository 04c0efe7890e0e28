#!/usr/bin/env bash
# Test tools that come from Debian, not from a wheel: the UI tests drive the machine's Chromium
# through chromedriver (`chromium`, `chromium-driver`; a test tool's own browser download does
# not work here), and the registry tests run a real registry (`docker-registry`, distribution 2.8).
# Installed when missing and this runs as root (CI does); otherwise it says what to install.
set -euo pipefail
missing=()
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  missing+=(chromium chromium-driver)
fi
if ! command -v docker-registry >/dev/null && [ ! -x /usr/bin/docker-registry ]; then
  missing+=(docker-registry)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
  exit 0
fi

# docker-registry's postinst starts a default registry on :5000 (invoke-rc.d). A policy-rc.d
# that exits 101 forbids service starts while we install; it is removed afterwards, also when
# the install fails. If one exists already it is left alone, and the service is stopped instead.
policy=/usr/sbin/policy-rc.d
ours=no
if [ ! -e "$policy" ]; then
  trap 'rm -f "$policy"' EXIT
  printf '#!/bin/sh\n# scripts/ensure_test_tools.sh: no service starts while test tools are installed\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  ours=yes
fi
echo "installing ${missing[*]} (test tools)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
if [ "$ours" = no ] && [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v invoke-rc.d >/dev/null; then
  invoke-rc.d docker-registry stop || true
fi
