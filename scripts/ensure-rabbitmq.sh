#!/usr/bin/env bash
# Make sure a RabbitMQ broker (3.10 or newer: quorum queues with at-least-once dead-lettering)
# is reachable on the host and port of MOAT_BROKER__URL (default 127.0.0.1:5672):
# use the running one; start the installed one; install Debian's rabbitmq-server when missing
# and we are root; otherwise say exactly what to do.
set -euo pipefail

# --management (the test target only): also enable the management plugin, when we may, so that
# the tests make and drop their vhosts over HTTP (127.0.0.1:15672) instead of one rabbitmqctl
# run, an Erlang VM start, each. Without it the tests use rabbitmqctl, only slower.
management=0
[ "${1:-}" = "--management" ] && management=1

management_up() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/15672" 2>/dev/null; }
enable_management() {
  [ "$management" = 1 ] || return 0
  management_up && return 0
  { [ "$(id -u)" -eq 0 ] && command -v rabbitmq-plugins >/dev/null 2>&1; } || return 0
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 || return 0
  for _ in $(seq 1 30); do management_up && break; sleep 1; done
  echo "RabbitMQ: management API on 127.0.0.1:15672 (for the tests' vhosts)"
}

url="${MOAT_BROKER__URL:-amqp://guest:guest@127.0.0.1:5672/}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=5672

reachable() { timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }
wait_reachable() {
  for _ in $(seq 1 90); do reachable && return 0; sleep 1; done
  return 1
}

if reachable; then
  echo "RabbitMQ: reachable on $host:$port"
  enable_management
  exit 0
fi
case "$host" in
  127.*|localhost|::1) ;;
  *) echo "RabbitMQ at $host:$port is not reachable; start it there, or point MOAT_BROKER__URL at a broker." >&2; exit 1 ;;
esac

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "RabbitMQ is not installed. Install and start it with:" >&2
    echo "  sudo apt-get install -y rabbitmq-server && sudo systemctl start rabbitmq-server" >&2
    exit 1
  fi
  echo "RabbitMQ: installing Debian's rabbitmq-server"
  "$(dirname "$0")/apt-install.sh" rabbitmq-server
fi

echo "RabbitMQ: starting the installed server"
if [ "$(id -u)" -eq 0 ]; then
  rabbitmq-server -detached >/dev/null 2>&1 || true
elif command -v systemctl >/dev/null 2>&1; then
  echo "RabbitMQ is installed but not running; start it with: sudo systemctl start rabbitmq-server" >&2
  exit 1
fi
if ! wait_reachable; then
  echo "RabbitMQ did not come up on $host:$port; see /var/log/rabbitmq/" >&2
  exit 1
fi
echo "RabbitMQ: reachable on $host:$port"
enable_management
