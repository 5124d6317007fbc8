#!/usr/bin/env bash
# Builds (or reuses) the stack test's base image from Debian's packages, with no image registry:
# debootstrap a Debian bookworm tree holding Python, PostgreSQL and Redis, `docker import` it.
# Prints the image tag on stdout. The image is cached as a tarball in $KPDD_STACK_CACHE
# (default /var/cache/kpdd-stack), keyed by a hash of this recipe, and `docker load`ed when
# present, so only the first run on a machine pays for debootstrap.
#   DOCKER_HOST=... bash scripts/stack/base_image.sh
set -euo pipefail

SUITE=bookworm
MIRROR="${KPDD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-venv: the project's virtual environment; postgresql, redis-server: the two servers'
# images; procps: pgrep/ps for health checks and debugging.
PACKAGES="python3,python3-venv,postgresql,redis-server,procps"
CACHE="${KPDD_STACK_CACHE:-/var/cache/kpdd-stack}"

die() { printf 'error: %s\n' "$*" >&2; exit 2; }
say() { printf '==> %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || die "debootstrap needs root: run the stack test as root"
command -v docker >/dev/null || die "docker not found: apt-get install docker.io"

recipe="$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES"; sed -n '/^# recipe-start/,/^# recipe-end/p' "$0")"
key="$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
tag="kpdd-stack-base:$key"
tarball="$CACHE/base-$key.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  say "base image $tag present"
elif [ -f "$tarball" ]; then
  say "loading base image $tag from $tarball"
  docker load -i "$tarball" >/dev/null || die "docker load of $tarball failed: delete it and run again"
else
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
  mkdir -p "$CACHE"
  rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap $SUITE into $rootfs (a few minutes, once per machine)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed (see $CACHE/debootstrap.log): check that $MIRROR is reachable or set KPDD_DEBIAN_MIRROR"
# recipe-start: what changes here changes the cache key
  # The package's own cluster is never used (the image initialises one in its volume).
  rm -rf "$rootfs"/var/lib/postgresql/15/main "$rootfs"/etc/postgresql/15/main
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log
  : >"$rootfs"/etc/hostname
# recipe-end
  say "docker import $tag"
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
  docker save -o "$tarball.part" "$tag" && mv "$tarball.part" "$tarball"
  # Older recipes' tarballs are dead weight.
  find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$key.tar" -delete
fi
echo "$tag"
