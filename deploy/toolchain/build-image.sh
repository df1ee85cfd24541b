#!/usr/bin/env bash
# Build the default reapi toolchain image locally (no registry needed).
#
#   deploy/toolchain/build-image.sh [TAG]        (default TAG: reapi-toolchain:bookworm)
#
# debootstraps a minbase Debian rootfs with a C/kernel build toolchain, adds a
# marker file (/etc/reapi-toolchain) and an unprivileged user reapi (1000:1000),
# and imports it with `docker import`.
#
# Environment:
#   FORCE=1          rebuild even if TAG already exists
#   MIRROR=URL       Debian mirror (default: taken from this machine's apt sources)
#   SUITE=bookworm   Debian suite
#   EXTRA_PACKAGES   extra packages, comma or space separated
#   REAPI_CACHE_DIR  where the debootstrap .deb tarball is cached
#                    (default: ${XDG_CACHE_HOME:-$HOME/.cache}/reapi)
#   KEEP_TMP=1       do not delete the temp dir (debugging)
# Needs root (debootstrap/chroot), debootstrap and a working docker daemon.
set -euo pipefail

TAG="${1:-reapi-toolchain:bookworm}"
SUITE="${SUITE:-bookworm}"
ARCH="${ARCH:-$(dpkg --print-architecture)}"
CACHE_DIR="${REAPI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/reapi}"
IMAGE_PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

PACKAGES=(
  # compilers / libc / build tools
  gcc g++ libc6-dev make binutils bc flex bison gawk cpio
  # Linux kernel build: headers + run-time libs/tools
  libelf-dev libelf1 libssl-dev openssl kmod pahole rsync
  # compression + scripting
  xz-utils zstd python3 perl
)

log() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

START=$SECONDS

# --- preflight -------------------------------------------------------------
command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "docker daemon not reachable (is dockerd running?)"

if [[ -z "${FORCE:-}" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "image $TAG already present (set FORCE=1 to rebuild)"
  docker image inspect --format '{{.Id}}' "$TAG"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap/chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"

if [[ -n "${EXTRA_PACKAGES:-}" ]]; then
  read -r -a extra <<<"${EXTRA_PACKAGES//,/ }"
  PACKAGES+=("${extra[@]}")
fi

# --- find the Debian mirror this machine's apt uses -------------------------
# Prints the first URI serving suite $SUITE, from one-line (.list) and deb822
# (.sources) files.
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    awk -v suite="$SUITE" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
        if ($(i+1) == suite) { print $i; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk -v suite="$SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled !~ /^no$/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
          split(uris, u, " "); print u[1]; found = 1; exit
        }
        types = suites = uris = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val) }
      key == "types"   { types = val }
      key == "suites"  { suites = val }
      key == "uris"    { uris = val }
      key == "enabled" { enabled = tolower(val) }
      END { if (!found) flush() }' "$f"
  done
}

if [[ -z "${MIRROR:-}" ]]; then
  MIRROR="$(find_mirror | head -n1)"
  [[ -n "$MIRROR" ]] || die "no apt source for suite '$SUITE' found in /etc/apt; set MIRROR=..."
fi
MIRROR="${MIRROR%/}"
log "tag=$TAG suite=$SUITE arch=$ARCH mirror=$MIRROR"

# --- temp dir ---------------------------------------------------------------
mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/reapi-toolchain.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() {
  local rc=$?
  # never leave bind/proc mounts behind before removing the tree
  if [[ -d "$ROOTFS" ]]; then
    awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  if [[ -n "${KEEP_TMP:-}" ]]; then
    log "keeping $WORK"
  else
    rm -rf --one-file-system "$WORK"
  fi
  if [[ $rc -ne 0 ]]; then
    printf '[build-image] FAILED (exit %d) after %ds\n' "$rc" $((SECONDS - START)) >&2
  fi
}
trap cleanup EXIT

# --- debootstrap (with cached .deb tarball) ----------------------------------
INCLUDE="$(IFS=,; echo "${PACKAGES[*]}")"
KEY="$(printf '%s\n' "$SUITE" "$ARCH" "$MIRROR" minbase "$INCLUDE" | sha256sum | cut -c1-12)"
TARBALL="$CACHE_DIR/debootstrap-$SUITE-$ARCH-$KEY.tgz"
DEBOOTSTRAP_LOG="$WORK/debootstrap.log"

run_debootstrap() { # args...; keeps output in a log, shows it on failure
  if ! debootstrap "$@" >"$DEBOOTSTRAP_LOG" 2>&1; then
    tail -n 40 "$DEBOOTSTRAP_LOG" >&2
    [[ -f "$ROOTFS/debootstrap/debootstrap.log" ]] && tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap $1 failed"
  fi
}

COMMON=(--variant=minbase --arch="$ARCH" --include="$INCLUDE")
if [[ -s "$TARBALL" ]]; then
  log "using cached package tarball $TARBALL"
else
  log "downloading packages (${#PACKAGES[@]} requested + minbase) -> $TARBALL"
  run_debootstrap --make-tarball="$TARBALL.part" "${COMMON[@]}" "$SUITE" "$WORK/dl" "$MIRROR"
  mv "$TARBALL.part" "$TARBALL"
  rm -rf "$WORK/dl"
fi

log "debootstrap into $ROOTFS"
run_debootstrap --unpack-tarball="$TARBALL" "${COMMON[@]}" "$SUITE" "$ROOTFS" "$MIRROR"

# --- customise ----------------------------------------------------------------
log "configuring rootfs"

# Keep it lean, also for anything installed later in derived images.
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-reapi-nodoc" <<'EOF'
# reapi toolchain: no docs, man pages or translations
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
# debootstrap installed before that config existed: apply it now.
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -depth -type d -empty -delete 2>/dev/null || true
for d in man groff info lintian linda locale; do
  [[ -d "$ROOTFS/usr/share/$d" ]] && find "$ROOTFS/usr/share/$d" -mindepth 1 -delete
done

cat >"$ROOTFS/etc/apt/apt.conf.d/01-reapi-lean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE ${SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
: >"$ROOTFS/etc/apt/sources.list"

# Marker: proves an action ran inside this image.
printf 'reapi-toolchain %s\nbuilt %s\n' "$SUITE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$ROOTFS/etc/reapi-toolchain"

# Unprivileged user for actions.
chroot "$ROOTFS" groupadd --gid 1000 reapi
chroot "$ROOTFS" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash reapi

# Cleanup: apt caches/lists, logs, host-specific files.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/debootstrap
find "$ROOTFS/usr" -name __pycache__ -type d -prune -exec rm -rf {} +
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"  # docker provides these
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"

# Sanity check before import.
for b in gcc g++ make ld bc flex bison gawk perl python3 cpio kmod xz zstd openssl; do
  chroot "$ROOTFS" /usr/bin/env PATH="$IMAGE_PATH" sh -c "command -v $b" >/dev/null ||
    die "'$b' missing from rootfs"
done
log "rootfs size: $(du -sh --one-file-system "$ROOTFS" | cut -f1)"

# --- import -------------------------------------------------------------------
OLD_ID="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
log "docker import -> $TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . |
  docker import \
    --change "ENV PATH=$IMAGE_PATH" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /' \
    --change 'CMD ["/bin/bash"]' \
    --message "reapi toolchain ($SUITE, debootstrap minbase from $MIRROR)" \
    - "$TAG" >/dev/null

ID="$(docker image inspect --format '{{.Id}}' "$TAG")"
SIZE="$(docker image inspect --format '{{.Size}}' "$TAG")"
if [[ -n "$OLD_ID" && "$OLD_ID" != "$ID" ]]; then
  # drop the image we just untagged, unless a container still uses it
  docker image rm "$OLD_ID" >/dev/null 2>&1 && log "removed previous image $OLD_ID" || true
fi
log "built $TAG $ID ($((SIZE / 1024 / 1024)) MiB) in $((SECONDS - START))s"
echo "$ID"
