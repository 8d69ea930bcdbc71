#!/usr/bin/env bash
# Install Debian packages for the ensure-*.sh scripts. Run as root (directly or with sudo).
# Usage: scripts/apt-install.sh [--no-recommends] [--no-start] PACKAGE...
#   --no-recommends  apt-get install --no-install-recommends
#   --no-start       the packages' maintainer scripts start no services (policy-rc.d)
#
# Two `make` runs at once (make install and make run, or two clones) would both run apt-get,
# and the second fails on dpkg's lock. So every apt step of Moat's scripts runs under one lock,
# and packages found installed once it is held are skipped. apt-get itself waits for dpkg's
# lock when someone else (unattended-upgrades) holds it, instead of failing at once.
set -euo pipefail

recommends=()
no_start=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-recommends) recommends=(--no-install-recommends); shift ;;
    --no-start) no_start=1; shift ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--no-recommends] [--no-start] PACKAGE..." >&2; exit 2; }

lock=/run/lock/moat-apt.lock
[ -d /run/lock ] || lock=/tmp/moat-apt.lock
exec 9>>"$lock"
flock 9

missing=()
for package in "$@"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
  [ "$status" = installed ] || missing+=("$package")
done
[ ${#missing[@]} -gt 0 ] || exit 0

export DEBIAN_FRONTEND=noninteractive
added_policy=""
if [ -n "$no_start" ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  # policy-rc.d answering 101 stops the maintainer scripts from starting the services.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  added_policy=1
fi
trap 'if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt_get=(apt-get -o DPkg::Lock::Timeout=600)
"${apt_get[@]}" update -qq
"${apt_get[@]}" install -y -qq "${recommends[@]}" "${missing[@]}" >/dev/null
