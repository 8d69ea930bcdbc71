#!/usr/bin/env bash
# For the tests: make sure PostgreSQL runs on 127.0.0.1:5432 and has the role the tests use
# (moat / moat, allowed to create databases). Starts the installed cluster, or installs
# Debian's postgresql when missing and we are root.
set -euo pipefail

reachable() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/5432" 2>/dev/null; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }

if ! reachable; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "PostgreSQL is not installed: sudo apt-get install -y postgresql" >&2
      exit 1
    fi
    echo "PostgreSQL: installing Debian's postgresql"
    "$(dirname "$0")/apt-install.sh" postgresql
  fi
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "PostgreSQL: starting cluster $version/main"
  if [ "$(id -u)" -eq 0 ]; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    pg_ctlcluster "$version" main start || true
  fi
  for _ in $(seq 1 60); do reachable && break; sleep 1; done
  reachable || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi

# Under a lock: two `make test` at once both saw no role and the second CREATE ROLE failed.
exec 9>/tmp/moat-ensure-postgres.lock
flock 9
as_postgres "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='moat'\"" | grep -q 1 \
  || as_postgres "psql -qc \"CREATE ROLE moat LOGIN CREATEDB PASSWORD 'moat'\""
echo "PostgreSQL: reachable on 127.0.0.1:5432 (role moat)"
