#!/usr/bin/env bash
# Makes sure a Docker daemon answers. If `docker info` works, does nothing; otherwise starts `dockerd`
# in the background (log: $REAPI_DOCKERD_LOG, default /tmp/reapi-dockerd.log) and waits up to
# $REAPI_DOCKERD_WAIT seconds (default 60) for its socket and `docker info`. Idempotent.
#   REAPI_DOCKERD_SOCK  socket path (default /var/run/docker.sock)
#   REAPI_DOCKERD_ARGS  extra dockerd arguments (word-split), e.g. "--data-root /tmp/d --bridge none"
set -euo pipefail

SOCK="${REAPI_DOCKERD_SOCK:-/var/run/docker.sock}"
LOG="${REAPI_DOCKERD_LOG:-/tmp/reapi-dockerd.log}"
WAIT="${REAPI_DOCKERD_WAIT:-60}"
export DOCKER_HOST="unix://$SOCK"

docker_ok() { docker info >/dev/null 2>&1; }

if docker_ok; then
  echo "start-dockerd: docker already answering on $SOCK"
  exit 0
fi

command -v dockerd >/dev/null || { echo "start-dockerd: FAILED: dockerd not installed (run deploy/install-deps.sh)" >&2; exit 1; }

# A dockerd may already be starting (e.g. a concurrent call): then only wait for it.
if [ "$SOCK" = /var/run/docker.sock ] && pgrep -x dockerd >/dev/null 2>&1; then
  echo "start-dockerd: dockerd process exists, waiting for it"
else
  echo "start-dockerd: starting dockerd (log: $LOG)"
  # shellcheck disable=SC2086
  setsid nohup dockerd -H "unix://$SOCK" ${REAPI_DOCKERD_ARGS:-} >>"$LOG" 2>&1 </dev/null &
  echo "start-dockerd: dockerd pid $!"
fi

for ((i = 0; i < WAIT * 2; i++)); do
  if [ -S "$SOCK" ] && docker_ok; then
    echo "start-dockerd: docker answering on $SOCK after ~$((i / 2)) s"
    exit 0
  fi
  sleep 0.5
done

echo "start-dockerd: FAILED: docker did not answer on $SOCK within ${WAIT} s; last log lines:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
