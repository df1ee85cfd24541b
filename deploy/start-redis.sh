#!/usr/bin/env bash
# Usage: deploy/start-redis.sh PORT DIR
# Starts a daemonized redis-server on 127.0.0.1:PORT with its files (pidfile, log) in DIR and no
# persistence, then waits (up to 30 s) for `redis-cli -p PORT ping` to answer PONG. Idempotent: if
# something on that port already answers PONG, does nothing. Stop it with:
#   redis-cli -p PORT shutdown nosave     (or: kill "$(cat DIR/redis.pid)")
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 PORT DIR" >&2
  exit 2
fi
PORT="$1"
DIR="$2"
case "$PORT" in '' | *[!0-9]*) echo "start-redis: bad port '$PORT'" >&2; exit 2 ;; esac

ping_ok() { [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = PONG ]; }

if ping_ok; then
  echo "start-redis: redis already answering on 127.0.0.1:$PORT"
  exit 0
fi

command -v redis-server >/dev/null || { echo "start-redis: FAILED: redis-server not installed (run deploy/install-deps.sh)" >&2; exit 1; }
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

echo "start-redis: starting redis-server on 127.0.0.1:$PORT (dir: $DIR)"
redis-server - >"$DIR/redis-start.log" 2>&1 <<CONF
bind 127.0.0.1
port $PORT
protected-mode yes
daemonize yes
pidfile $DIR/redis.pid
logfile $DIR/redis.log
dir $DIR
save ""
appendonly no
CONF

for ((i = 0; i < 60; i++)); do
  if ping_ok; then
    echo "start-redis: PONG on 127.0.0.1:$PORT (pid $(cat "$DIR/redis.pid" 2>/dev/null || echo '?'))"
    exit 0
  fi
  sleep 0.5
done

echo "start-redis: FAILED: no PONG on 127.0.0.1:$PORT within 30 s; last log lines:" >&2
tail -n 20 "$DIR/redis-start.log" "$DIR/redis.log" >&2 || true
exit 1
