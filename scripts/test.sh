#!/usr/bin/env bash
# The test suite, on a fresh machine: installs PostgreSQL and Redis binaries when missing (the
# suite starts its own private servers from them), Docker, Compose and debootstrap (the stack
# test builds and runs the containers), the virtual environment and the project, then runs the
# linters and pytest. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
ensure_servers
ensure_docker  # the stack test: Docker engine, Compose, debootstrap
ensure_venv dev,train
cd "$KPDD_ROOT"
export KPDD_DATASETS_DIR="$(datasets_dir)"

say "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
say "mypy (db, services, workers)"
"$VENV/bin/mypy"
say "pytest"
"$VENV/bin/pytest" "$@"
