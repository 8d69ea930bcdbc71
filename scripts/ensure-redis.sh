#!/usr/bin/env bash
# For the tests: make sure Redis runs on 127.0.0.1:6379 (the session limits' shared counters).
# Starts the installed server, or installs Debian's redis-server when missing and we are root.
set -euo pipefail

reachable() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/6379" 2>/dev/null; }

if ! reachable; then
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "Redis is not installed: sudo apt-get install -y redis-server" >&2
      exit 1
    fi
    echo "Redis: installing Debian's redis-server"
    "$(dirname "$0")/apt-install.sh" --no-start redis-server
  fi
  echo "Redis: starting redis-server on 127.0.0.1:6379"
  # No persistence: the tests' counters are throwaway, and a dump file would land in the cwd.
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no
  for _ in $(seq 1 30); do reachable && break; sleep 1; done
  reachable || { echo "Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }
fi
echo "Redis: reachable on 127.0.0.1:6379"
