#!/usr/bin/env bash
# The main job, end to end, on embedded defaults: no servers, no API keys.
# Creates the SQLite database under ./kpdd-data, ingests GSM8K, lists the corpora.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
ensure_venv
cd "$KPDD_ROOT"
export PATH="$VENV/bin:$PATH"
DATA="$(datasets_dir)"

say "kpdd db upgrade"
kpdd db upgrade
say "kpdd ingest gsm8k (train and test)"
kpdd ingest gsm8k "$DATA/gsm8k/train.jsonl" --corpus gsm8k --split train
kpdd ingest gsm8k "$DATA/gsm8k/test.jsonl" --corpus gsm8k --split test
say "kpdd corpora"
kpdd corpora
