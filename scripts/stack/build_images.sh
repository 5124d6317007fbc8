#!/usr/bin/env bash
# Builds the stack test's images with no image registry and no network inside any build:
#   1. the base image from Debian's packages (base_image.sh; cached between runs),
#   2. wheels of the project and its dependencies, built on the host by pip in a virtual
#      environment of Debian's own python3, the interpreter the base image holds, so that
#      dependency markers (python_full_version < "3.11.3", ...) resolve as they will in the image
#      (dependencies are cached in $KPDD_STACK_CACHE/wheelhouse; the project's wheel is rebuilt),
#   3. the project image from the repository's Dockerfile, with the base image as BASE_IMAGE and
#      the folder of wheels as its build context (pip install --no-index),
#   4. PostgreSQL and Redis images from Debian's packages on the same base.
# Tags (override with the variables): KPDD_STACK_IMAGE, KPDD_STACK_PG_IMAGE, KPDD_STACK_REDIS_IMAGE.
#   DOCKER_HOST=... bash scripts/stack/build_images.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${KPDD_STACK_CACHE:-/var/cache/kpdd-stack}"
HOST_PYTHON="${KPDD_STACK_PYTHON:-/usr/bin/python3}"
IMAGE="${KPDD_STACK_IMAGE:-kpdd-stack/kpdd:test}"
PG_IMAGE="${KPDD_STACK_PG_IMAGE:-kpdd-stack/postgres:test}"
REDIS_IMAGE="${KPDD_STACK_REDIS_IMAGE:-kpdd-stack/redis:test}"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin, no frontend image to pull

die() { printf 'error: %s\n' "$*" >&2; exit 2; }
say() { printf "==> [%4ss] %s\n" "$SECONDS" "$*" >&2; }
[ -x "$HOST_PYTHON" ] || die "$HOST_PYTHON not found: apt-get install python3 python3-venv, or set KPDD_STACK_PYTHON"
# The machine's pip.conf may name local indexes that do not exist everywhere; pip says so per package.
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }

base="$(bash "$HERE/base_image.sh")"

mkdir -p "$CACHE/wheelhouse"
PY="$CACHE/wheel-venv/bin/python"
if [ ! -x "$PY" ]; then
  "$HOST_PYTHON" -m venv "$CACHE/wheel-venv" || die "python3 -m venv failed: apt-get install python3-venv"
  "$PY" -m pip install -q --upgrade pip "setuptools>=77" wheel 2> >(quiet_pip) >&2
fi
ctx="$(mktemp -d "$CACHE/context.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
say "wheels of the project and its dependencies"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$ctx" "$ROOT" 2> >(quiet_pip) >&2 \
  || die "building the kpdd wheel failed: pip wheel --no-deps $ROOT"
project_wheel="$(ls "$ctx"/kpdd-*.whl)"
# Offline first (everything already in the cache); the index only when something is missing.
if ! "$PY" -m pip wheel -q --no-index --find-links "$CACHE/wheelhouse" -w "$CACHE/wheelhouse" "$project_wheel" >/dev/null 2>&1; then
  "$PY" -m pip wheel -q --find-links "$CACHE/wheelhouse" -w "$CACHE/wheelhouse" "$project_wheel" 2> >(quiet_pip) >&2 \
    || die "downloading the dependencies' wheels failed: check that PyPI is reachable"
fi
rm -f "$CACHE"/wheelhouse/kpdd-*.whl
cp -l "$CACHE"/wheelhouse/*.whl "$ctx"/ 2>/dev/null || cp "$CACHE"/wheelhouse/*.whl "$ctx"/

# The classic builder's deprecation notice is noise here; errors still come through.
build() {
  docker build -q --force-rm --network none --build-arg BASE_IMAGE="$base" "$@" \
    2> >(grep -v -e DEPRECATED -e "BuildKit is currently" -e "environment-variable" -e "^$" >&2) >/dev/null
}
say "image $IMAGE (base $base)"
build -t "$IMAGE" -f "$ROOT/Dockerfile" "$ctx"
say "images $PG_IMAGE, $REDIS_IMAGE"
build -t "$PG_IMAGE" -f "$HERE/postgres.Dockerfile" "$HERE"
build -t "$REDIS_IMAGE" -f "$HERE/redis.Dockerfile" "$HERE"
# Earlier builds' layers, untagged now, are dead weight in the engine's data root.
docker image prune -f >/dev/null
