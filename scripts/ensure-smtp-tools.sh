#!/usr/bin/env bash
# Make sure swaks and openssl (Debian's) are installed: the ingress TLS and submission tests
# (tests/e2e/test_ingress_tls.py) drive the listeners with them as real clients. Quiet and
# quick when they are there. Installs them as root, or with sudo when sudo needs no password;
# otherwise says what to run and goes on (those tests are then skipped).
set -euo pipefail

missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# swaks speaks TLS through Net::SSLeay (a recommendation only, so named here).
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl libio-socket-ssl-perl)
[ ${#missing[@]} -gt 0 ] || exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "the SMTP test clients are missing; the tests that use them are skipped:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 0
fi
echo "smtp tools: installing Debian's ${missing[*]}"
"${as_root[@]}" "$(dirname "$0")/apt-install.sh" --no-recommends "${missing[@]}"
