#!/usr/bin/env bash
# For the tests: make sure clamd (Debian's clamav-daemon) is installed. The tests start their
# own clamd with a tiny test signature database (tests/support/clamd.py); this script never
# starts the system's clamav-daemon or freshclam services and never runs freshclam.
set -euo pipefail

have_clamd() { command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ]; }

if ! have_clamd; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "clamd is not installed: sudo apt-get install -y --no-install-recommends clamav-daemon" >&2
    exit 1
  fi
  echo "ClamAV: installing Debian's clamav-daemon (services not started)"
  # --no-start: neither clamd nor the freshclam daemon (which would download the signature
  # databases) is started by the package.
  "$(dirname "$0")/apt-install.sh" --no-recommends --no-start clamav-daemon
fi
have_clamd || { echo "clamd still not found after installing clamav-daemon" >&2; exit 1; }
clamd="$(command -v clamd || echo /usr/sbin/clamd)"
echo "ClamAV: $("$clamd" --version) installed (the tests run their own clamd)"
