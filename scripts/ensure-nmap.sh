#!/usr/bin/env bash
# For the tests: make sure Debian's nmap is installed, for the enumeration and open-relay scan
# of the SMTP listener (tests/e2e/test_recipient_verification.py runs nmap's smtp-open-relay,
# smtp-enum-users and smtp-commands scripts against a test gateway on loopback). Without nmap
# that one test is skipped with the reason; nothing else needs it.
set -euo pipefail

have() { command -v nmap >/dev/null 2>&1; }

if ! have; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "nmap is not installed (the nmap scan test is skipped):" \
      "sudo apt-get install -y --no-install-recommends nmap" >&2
    exit 0
  fi
  echo "nmap: installing Debian's nmap"
  "$(dirname "$0")/apt-install.sh" --no-recommends nmap ||
    { echo "could not install nmap (the nmap scan test is skipped)" >&2; exit 0; }
fi
have && echo "nmap: $(nmap --version | head -n 1)"
exit 0
