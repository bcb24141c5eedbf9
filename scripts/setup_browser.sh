#!/usr/bin/env bash
# Install Debian's chromium for the UI test (driven by Playwright, which ships no browser here).
# Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup_browser.sh: /usr/bin/chromium is missing; install it as root: apt-get install chromium" >&2
  exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium: $(/usr/bin/chromium --version)"
