#!/usr/bin/env bash
# The main job, end to end, on embedded defaults: no servers, no API keys needed.
# Creates the SQLite database under ./kpdd-data, ingests GSM8K, probes a teacher, runs a
# generation job (CoT and PoT, validated: programs in the sandbox, answers matched) on a sample,
# shows its results, exports it as a verified dataset snapshot, then trains a tiny student on that
# snapshot for a few steps on CPU (a real DeepSpeed launch) and evaluates it on GSM8K test items.
# With OPENAI_API_KEY set it uses openai:gpt-4o-mini on a small, budgeted sample instead of the
# simulator; KPDD_DEMO_TEACHER picks any other teacher spec.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
ensure_venv train
cd "$KPDD_ROOT"
export PATH="$VENV/bin:$PATH"
DATA="$(datasets_dir)"

if [ -n "${KPDD_DEMO_TEACHER:-}" ]; then
  TEACHER="$KPDD_DEMO_TEACHER"; LIMIT=20; BUDGET=(--budget-usd 0.50)
elif [ -n "${OPENAI_API_KEY:-}" ]; then
  TEACHER="openai:gpt-4o-mini,temperature=0.7"; LIMIT=20; BUDGET=(--budget-usd 0.50)
else
  TEACHER="sim:gold"; LIMIT=200; BUDGET=()
fi

say "kpdd db upgrade"
kpdd db upgrade
say "kpdd ingest gsm8k (train and test)"
kpdd ingest gsm8k "$DATA/gsm8k/train.jsonl" --corpus gsm8k --split train
kpdd ingest gsm8k "$DATA/gsm8k/test.jsonl" --corpus gsm8k --split test
say "kpdd corpora"
kpdd corpora
say "kpdd probe: 2 problems through $TEACHER"
kpdd probe --teacher "$TEACHER" --corpus gsm8k --split train --limit 2 --mode pot
say "kpdd generate: $LIMIT problems, CoT and PoT, teacher $TEACHER (in-process: no broker set)"
kpdd generate --corpus gsm8k --split train --teacher "$TEACHER" --mode both --limit "$LIMIT" \
  ${BUDGET[@]+"${BUDGET[@]}"}
say "kpdd status"
kpdd status
JOB="$(kpdd status --json | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["jobs"][0]["job_id"])')"
OUT="kpdd-data/snapshots/job-$JOB"
say "kpdd export: job $JOB, deduplicated, decontaminated against the evaluation sets"
if [ -e "$OUT" ]; then
  echo "$OUT exists (an earlier demo run): verifying it instead"
else
  kpdd export --job "$JOB" --dedupe --decontaminate gsm8k-test svamp asdiv multiarith \
    --val-fraction 0.05 --out "$OUT"
fi
say "kpdd snapshot verify $OUT"
kpdd snapshot verify "$OUT"
kpdd snapshots
say "kpdd train: a tiny random decoder-only student, 60 steps on CPU (DeepSpeed, 1 process)"
echo "A tiny model built from a config with random weights (no download) learns the format in a"
echo "minute, not arithmetic: expect an accuracy near 0%. See README, Training students, for a"
echo "real recipe (Qwen2.5-0.5B or FlanT5-Large on GPUs)."
kpdd train --snapshot "$OUT" --config training/configs/tiny-llama.yaml --set train.max_steps=60 \
  --eval gsm8k-test --eval-limit 20 --eval-mode pot
say "kpdd runs"
kpdd runs
