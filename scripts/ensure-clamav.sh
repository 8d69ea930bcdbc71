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
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d answering 101 stops the packages' maintainer scripts from starting clamd and
  # the freshclam daemon (which would download the signature databases).
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  trap 'if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends clamav-daemon >/dev/null
fi
have_clamd || { echo "clamd still not found after installing clamav-daemon" >&2; exit 1; }
clamd="$(command -v clamd || echo /usr/sbin/clamd)"
echo "ClamAV: $("$clamd" --version) installed (the tests run their own clamd)"
