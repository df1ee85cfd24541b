#!/usr/bin/env bash
# Installs what reapi needs on Debian 12 (as root), then `npm ci` when node_modules is stale.
# Idempotent and fast when everything is present: apt-get runs (after one `apt-get update`) only for
# packages that are missing. One line per step; apt/npm output goes to a log shown only on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="${TMPDIR:-/tmp}/reapi-install-deps.log"
: >"$LOG"

# openssl: the TLS tests make their certificates with it. libnetty-tcnative-jni: Debian's Bazel has
# no ALPN in its Netty, so its gRPC TLS (grpcs://) works only through netty-tcnative (OpenSSL).
PACKAGES=(
  docker.io redis-server bazel-bootstrap debootstrap ccache distcc linux-source-6.1 zstd
  make gcc g++ libc6-dev ca-certificates openssl libnetty-tcnative-jni
  flex bison bc libelf-dev libssl-dev xz-utils
)

run() { # run CMD... quietly; on failure show the log tail and exit
  if ! "$@" >>"$LOG" 2>&1; then
    echo "install-deps: FAILED: $* (log: $LOG)" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: apt packages present (${#PACKAGES[@]})"
else
  echo "install-deps: apt-get update"
  run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  echo "install-deps: apt-get install ${missing[*]}"
  run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for c in dockerd docker redis-server redis-cli bazel debootstrap ccache distcc zstd make gcc; do
  command -v "$c" >/dev/null || { echo "install-deps: FAILED: '$c' not on PATH after install" >&2; exit 1; }
done
echo "install-deps: tools on PATH (bazel-bootstrap $(dpkg-query -W -f='${Version}' bazel-bootstrap))"

if ! command -v npm >/dev/null; then
  echo "install-deps: FAILED: npm not found (Node.js 20 is expected on the machine)" >&2
  exit 1
fi
stamp="$REPO/node_modules/.package-lock.json"
if [ ! -d "$REPO/node_modules" ] || [ ! -e "$stamp" ] || [ "$REPO/package-lock.json" -nt "$stamp" ]; then
  echo "install-deps: npm ci"
  (cd "$REPO" && run npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp" 2>/dev/null || true
else
  echo "install-deps: node_modules up to date"
fi
