# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).
# Installs only what is missing: system packages via apt-get, a virtual environment in .venv,
# and the project with the extras asked for. Safe to run again: a stamp skips pip when
# pyproject.toml has not changed.

KPDD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$KPDD_ROOT/.venv"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run '$*': install the packages by hand or run as root"; fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your package manager"
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $* (apt-get)"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_python() {
  PYTHON="${PYTHON:-python3}"
  command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3 python3-venv
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "kpdd needs Python >= 3.11 (found $("$PYTHON" --version)); set PYTHON=/path/to/python3.11"
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
}

# ensure_servers: PostgreSQL and Redis server binaries, for the test suite's private servers,
# and Chromium for the dashboard's browser test.
ensure_servers() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    apt_install postgresql
  fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  # The dashboard test drives Debian's headless Chromium with Playwright.
  command -v chromium >/dev/null 2>&1 || apt_install chromium
}

# ensure_docker: what the stack test (tests/stack/) needs to build its images with no image
# registry and run the stack: Docker's engine and Compose from Debian's packages, debootstrap for
# the base image, and Debian's own python3 with venv (its wheels must match the image's Python).
ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
  [ "${#missing[@]}" = 0 ] || apt_install "${missing[@]}"
}

# pip, quiet; drops one harmless warning some machines' pip.conf triggers on every package.
pip_install() {
  "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# ensure_venv [EXTRAS]: .venv with the project installed editable, with extras such as "dev,train".
ensure_venv() {
  local extras="${1:-}"
  local target="$KPDD_ROOT"
  [ -z "$extras" ] || target="$KPDD_ROOT[$extras]"
  ensure_python
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  local stamp="$VENV/.kpdd-installed-${extras:-core}"
  local digest
  digest="$(sha256sum < "$KPDD_ROOT/pyproject.toml" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then return 0; fi
  say "installing kpdd${extras:+[$extras]} into $VENV"
  pip_install --upgrade pip setuptools wheel
  case ",$extras," in
    *,train,*)
      # Torch first, pinned: the CPU wheel here. For GPUs see README ("Training on GPUs").
      pip_install "torch==2.13.0"
      # DeepSpeed builds against the installed torch (no isolated build pulling another torch).
      pip_install --no-build-isolation -e "$target"
      ;;
    *) pip_install -e "$target" ;;
  esac
  echo "$digest" > "$stamp"
}

datasets_dir() {
  local dir="${KPDD_DATASETS_DIR:-$KPDD_ROOT/../shared/datasets}"
  [ -f "$dir/gsm8k/train.jsonl" ] || die "datasets not found in $dir; set KPDD_DATASETS_DIR"
  (cd "$dir" && pwd)
}
