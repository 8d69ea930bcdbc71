#!/usr/bin/env bash
# For the end-to-end bench only (bench/smtp_bench.py's Postfix+Rspamd row), never for `make test`:
# make sure Debian's rspamd is installed. The bench starts its own rspamd on loopback with a
# configuration in a temp dir (bench/rspamd_peer.py); this script never starts the system's
# rspamd service (--no-start), so nothing listens on rspamd's default ports after it.
set -euo pipefail

have_rspamd() { command -v rspamd >/dev/null 2>&1 || [ -x /usr/bin/rspamd ]; }

if ! have_rspamd; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "rspamd is not installed: sudo apt-get install -y --no-install-recommends rspamd" >&2
    exit 1
  fi
  echo "Rspamd: installing Debian's rspamd (service not started)"
  "$(dirname "$0")/apt-install.sh" --no-recommends --no-start rspamd
fi
have_rspamd || { echo "rspamd still not found after installing Debian's rspamd" >&2; exit 1; }
rspamd="$(command -v rspamd || echo /usr/bin/rspamd)"
echo "Rspamd: $("$rspamd" --version 2>/dev/null | head -n 1) installed (the bench runs its own rspamd)"
