"""Training throughput on one GPU: kpdd's DeepSpeed loop against the plain Hugging Face Trainer.

Two students with random weights, trained through the public contract users run
(`python -m training.prepare`, then the DeepSpeed launcher on `training.train`), each from its
recipe in `training/configs/` with only the benchmark's overrides (`--set`):

- decoder: Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, tied
  embeddings), `qwen2.5-0.5b-pot.yaml` (bf16, ZeRO-2, micro batch 4, global batch 32, rows of
  2048 tokens), once with packing (the recipe) and once without;
- t5: Flan-T5-Large's shape (d_model 1024, 24 + 24 layers, 16 heads, gated-gelu MLP 2816),
  `flan-t5-large-pot.yaml` (bf16, ZeRO-2, micro batch 8, global batch 64, 512 + 512 tokens).

With `--vocab real` (the default) the weights are written, random, into a Hugging Face model
directory with the real model's embedding rows (151,936 and 32,128) next to a tokenizer trained
on the snapshot, and the recipe's `model.path` points at it: the parameter count is the real
model's. With `--vocab snapshot` the model is built from the config's size fields
(`model.path: null`), so its vocabulary is the tokenizer's (16,000 rows) and a built T5 has a
plain ReLU MLP (no config field for gated-gelu). docs/benchmarks.md says how that changes the
parameter count and MFU.

The baseline, measured in the same run on the same model config, tokens and micro batch / sequence
limits: `transformers.Trainer` with DeepSpeed ZeRO-2 (the run's own ds_config.json) in bf16, the
default padding collator (`DataCollatorForSeq2Seq`, labels -100 on padding and, for the decoder,
on the prompt), no packing, random order. It runs in a child process of its own, started by the
same launcher, so its peak memory is its own.

Timing: every run trains 2 x `--steps` optimizer steps. The first `--steps` are the warm-up
(CUDA and kernel start-up, allocator growth, the epoch's batches) and are excluded; the figures are
those of the last `--steps`: for kpdd its metrics.jsonl record of the last step (one logging
window), for the baseline a callback with a device synchronise at both ends. Tokens per second
count real, non-padding token positions (for T5, source plus target tokens) per GPU, as
`training/metrics.py` defines them; MFU is `training.metrics.mfu` against the dense bf16 peak in
`training/hardware.py`; peak memory is torch's peak allocation (peak RSS on CPU).

The snapshot is built without servers: `kpdd ingest` GSM8K train, `kpdd generate` with the
simulator teacher `sim:gold` (PoT), `kpdd export`, on embedded defaults in a temporary
KPDD_DATA_DIR; it is kept under benchmarks/out/snapshots/ and reused by later runs.

    .venv/bin/python -m benchmarks.bench_training --smoke          # CPU rehearsal, a few minutes
    python -m benchmarks.bench_training                            # one GPU
        [--steps 10] [--problems 7473] [--only decoder|t5] [--vocab real|snapshot]
        [--snapshot DIR] [--snapshot-only] [--out FILE.json] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out"
TARGET_MFU = 0.45  # the 0.5B decoder with packing
TARGET_RATIO = 1.3  # its tokens/s over the baseline's
TOKENIZER_VOCAB = 16_000  # asked of the snapshot-trained BPE; a small corpus yields fewer


@dataclass(frozen=True, slots=True)
class Student:
    """One model of the benchmark: its recipe, the real model's shape as a Hugging Face config
    (random weights, `--vocab real`) and as `model.*` size fields (`--vocab snapshot`), and the
    same two for `--smoke`."""

    key: str
    label: str
    recipe: str
    arch: str
    hf_config: dict[str, Any]
    sizes: dict[str, int]
    smoke_hf_config: dict[str, Any]
    smoke_sizes: dict[str, int]
    packing: tuple[bool, ...]

    @property
    def kind(self) -> str:
        return "seq2seq" if self.arch == "t5" else "causal"


STUDENTS = {
    "decoder": Student(
        "decoder", "Qwen2.5-0.5B shape", "training/configs/qwen2.5-0.5b-pot.yaml", "qwen2",
        dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
             rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
        dict(d_model=896, layers=24, heads=14, kv_heads=2, ff=4864, max_positions=2048),
        dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        dict(d_model=64, layers=2, heads=4, kv_heads=2, ff=128, max_positions=1024),
        (True, False),
    ),
    "t5": Student(
        "t5", "Flan-T5-Large shape", "training/configs/flan-t5-large-pot.yaml", "t5",
        # tie_word_embeddings False: T5 v1.1 / Flan's unscaled output (transformers 5 ties anyway)
        dict(vocab_size=32_128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
             num_heads=16, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        dict(d_model=1024, layers=24, heads=16, ff=2816),
        dict(vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
             num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        dict(d_model=64, layers=2, heads=4, ff=128),
        (False,),
    ),
}  # fmt: skip
# --smoke: the same recipes and code paths with tiny shapes, short rows and small batches (CPU).
SMOKE_SETS = [
    "data.max_source_tokens=256",
    "data.max_target_tokens=320",
    "data.max_seq_len=1024",
    "batch.micro_batch_size=2",
    "batch.global_batch_size=4",
    "precision.dtype=auto",  # fp32 on CPU: the recipes' bf16 is for GPUs
]
SMOKE_TOKENIZER_VOCAB = 1000


def default_datasets() -> Path:
    env = os.environ.get("KPDD_DATASETS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_logged(argv: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `argv` from the repository root with its output in `log`; returns (seconds, stdout
    text). A failure stops the benchmark with the log's last lines. The child gets its own
    process group, which is ended with it if the benchmark is interrupted."""
    start = time.perf_counter()
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=handle, start_new_session=True
        )
        try:
            out, _ = proc.communicate()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        handle.write(out)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"{' '.join(argv[:6])} ... failed (exit {proc.returncode}); end of {log}:\n{tail}")
    return time.perf_counter() - start, out.decode()


def launcher(module_args: list[str]) -> list[str]:
    """DeepSpeed's launcher for one process on one GPU, as `kpdd train --num-gpus 1` starts it."""
    return [
        *(sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1"),
        *("--master_port", str(free_port()), "--module", *module_args),
    ]


# --- the snapshot and the model directories ------------------------------------------------------


def build_snapshot(target: Path, problems: int, datasets: Path) -> None:
    """GSM8K train through the kpdd CLI on embedded defaults (SQLite, in-process, the simulator):
    ingest, generate PoT rationales with `sim:gold` for the first `problems`, export."""
    source = datasets / "gsm8k" / "train.jsonl"
    if not source.is_file():
        raise SystemExit(f"{source} not found: set KPDD_DATASETS_DIR to the folder holding gsm8k/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kpdd-bench-training-db-") as data_dir:
        # Only embedded defaults: a KPDD_DATABASE_URL or broker in the environment is not ours.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KPDD_")} | {"KPDD_DATA_DIR": data_dir}
        log = target.parent / f"{target.name}.log"
        cli = [sys.executable, "-m", "services.cli.main"]
        generate = ["generate", "--corpus", "gsm8k", "--split", "train", "--mode", "pot"]
        steps = [
            ["db", "upgrade"],
            ["ingest", "gsm8k", str(source), "--corpus", "gsm8k", "--split", "train"],
            [*generate, "--teacher", "sim:gold", "--limit", str(problems)],
            ["export", "--corpus", "gsm8k", "--mode", "pot", "--out", str(target)],
        ]
        for step in steps:
            seconds, _ = run_logged([*cli, *step], log, env)
            print(f"  kpdd {' '.join(step[:2])}: {seconds:.1f} s", flush=True)


def train_texts(snapshot: Path) -> list[str]:
    """What `training.train` trains a tokenizer on: the training inputs and targets (PoT, the
    snapshot's layout), in order."""
    from training.data import read_tasks

    return [t for e in read_tasks(snapshot, None, "train", ["pot"]) for t in (e.input, e.target)]


def write_random_model(
    student: Student, hf_config: dict[str, Any], texts: list[str], vocab: int, directory: Path
) -> dict[str, int]:
    """A Hugging Face model directory: random weights of `hf_config`'s shape (bf16 on disk; the
    loop loads fp32) and a BPE tokenizer trained on `texts` with kpdd's special ids, so the
    recipe loads it as it would the real checkpoint. The embedding keeps `hf_config`'s rows; the
    rows past the tokenizer's are never looked up, as in the real checkpoints."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

    from training.data import build_tokenizer
    from training.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
    from training.model import count_parameters

    tokenizer = build_tokenizer(texts, vocab_size=vocab, arch=student.kind)
    if len(tokenizer) > hf_config["vocab_size"]:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, more than the model's rows")
    torch.manual_seed(1234)
    ids = {"pad_token_id": PAD_ID, "eos_token_id": EOS_ID}
    if student.arch == "t5":
        model = T5ForConditionalGeneration(T5Config(**hf_config, **ids, decoder_start_token_id=PAD_ID))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**hf_config, **ids, bos_token_id=BOS_ID, use_cache=False))
    n_params = count_parameters(model)
    model.to(torch.bfloat16).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return {"n_params": n_params, "embedding_rows": hf_config["vocab_size"], "tokenizer_size": len(tokenizer)}


# --- one kpdd run and one baseline run -----------------------------------------------------------


def kpdd_run(
    student: Student, recipe_sets: list[str], packing: bool, snapshot: Path, run_dir: Path, steps: int
) -> dict[str, Any]:
    """prepare + launcher + training.train; the figures of the last (timed) logging window."""
    sets = [
        *recipe_sets,
        f"data.packing={str(packing).lower()}",
        f"train.max_steps={2 * steps}",
        f"train.log_every_steps={steps}",  # windows: steps 1..N (warm-up), N+1..2N (timed)
        "train.save_every_steps=null",
        "train.eval_every_steps=null",
        "train.samples=0",
    ]
    shutil.rmtree(run_dir, ignore_errors=True)  # ours, from an earlier run in the same --work-dir
    run_dir.mkdir(parents=True)
    log = run_dir / "bench.log"
    prepare = [sys.executable, "-m", "training.prepare", "--snapshot", str(snapshot)]
    prepare += ["--config", str(REPO / student.recipe), *(f"--set={s}" for s in sets)]
    _, out = run_logged([*prepare, "--run-dir", str(run_dir), "--world-size", "1"], log)
    prepared = json.loads(out)
    seconds, _ = run_logged(launcher(["training.train", "--run-dir", str(run_dir), "--resume", "never"]), log)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if [r["step"] for r in records] != [steps, 2 * steps]:
        raise SystemExit(f"{run_dir}/metrics.jsonl: expected steps {steps} and {2 * steps}, got {records}")
    warm, timed = records
    # Each epoch's micro batches are built at its first step: inside the timed window that cost
    # would be counted (raise --problems then).
    first_new_epoch = max(1, math.ceil(warm["epoch"]))
    batch = prepared["deepspeed"]
    # The checkpoint and final/ (gigabytes) are not needed for the figures; the disk may be small.
    for name in ("checkpoints", "final"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    return {
        "run": f"kpdd, {'packing' if packing else 'no packing'}",
        "tokens_per_s_per_gpu": timed["tokens_per_s_per_gpu"],
        "mfu": timed["mfu"],
        "peak_memory_bytes": timed["peak_memory_bytes"],
        "padding_efficiency": timed["padding_efficiency"],
        "loss": timed["loss"],
        "micro_batch_size": batch["train_micro_batch_size_per_gpu"],
        "gradient_accumulation_steps": batch["gradient_accumulation_steps"],
        "row_tokens": prepared["config"]["data"]["max_seq_len"] if packing else None,
        "attn_implementation": prepared["config"]["model"]["attn_implementation"] or "transformers default",
        "dtype": prepared["dtype"],
        "train_examples": prepared["train_examples"],
        "epochs_at_end": timed["epoch"],
        "epoch_started_in_timed_window": first_new_epoch < timed["epoch"],
        "wall_s": round(seconds, 1),
        "run_dir": str(run_dir),
        "overrides": sets,
    }


def baseline_run(kpdd_run_dir: Path, steps: int) -> dict[str, Any]:
    """The Hugging Face Trainer on the config of `kpdd_run_dir`, in its own launched process."""
    result = kpdd_run_dir.parent / f"{kpdd_run_dir.name}-hf-baseline.json"
    argv = ["benchmarks.bench_training", "--baseline-child", str(kpdd_run_dir), str(result)]
    seconds, _ = run_logged(launcher([*argv, "--steps", str(steps)]), kpdd_run_dir / "bench-baseline.log")
    return json.loads(result.read_text()) | {"wall_s": round(seconds, 1)}


def baseline_child(run_dir: Path, result: Path, steps: int) -> None:
    """Runs under the launcher: the plain Trainer with the kpdd run's model, data and DeepSpeed
    config; writes the timed window's figures to `result`."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from training import hardware
    from training.config import resolve
    from training.data import IGNORE_INDEX, encode, load_tokenizer, read_tasks
    from training.metrics import mfu
    from training.model import build_model, count_parameters, load_pretrained_tokenizer

    cfg = resolve(run_dir / "config.yaml", [], 1)
    kind = cfg.model.kind
    dtype = hardware.resolve_dtype(cfg.precision.dtype)
    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    ds_config["bf16"] = {"enabled": dtype == "bf16"}
    ds_config["fp16"] = {**ds_config.get("fp16", {}), "enabled": dtype == "fp16"}
    tokenizer = (
        load_pretrained_tokenizer(cfg.model) if cfg.model.path else load_tokenizer(run_dir / "tokenizer")
    )
    examples = read_tasks(Path(cfg.data.snapshot or ""), cfg.data.layout, "train", cfg.data.modes)
    encoded, _ = encode(
        examples,
        tokenizer,
        arch=kind,
        max_source_tokens=cfg.data.max_source_tokens,
        max_target_tokens=cfg.data.max_target_tokens,
    )
    if kind == "causal":
        rows = [
            {
                "input_ids": e.source_ids + e.target_ids,
                "labels": [IGNORE_INDEX] * len(e.source_ids) + e.target_ids,
            }
            for e in encoded
        ]
    else:
        rows = [{"input_ids": e.source_ids, "labels": e.target_ids} for e in encoded]
    for row in rows:
        row["attention_mask"] = [1] * len(row["input_ids"])
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(tokenizer))
    n_params = count_parameters(model)
    tokenizer.padding_side = "right"  # the usual training padding (kpdd's tokenizer pads left for generation)
    collator = DataCollatorForSeq2Seq(
        tokenizer, model=model if kind == "seq2seq" else None, label_pad_token_id=IGNORE_INDEX
    )
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    marks: dict[int, float] = {}
    totals: dict[str, Any] = {"real": 0, "slot": 0}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (steps, 2 * steps):
                sync()
                marks[state.global_step] = time.perf_counter()

    class CountingTrainer(Trainer):
        """Counts the token positions of each micro batch of the timed steps, on the device
        (no synchronisation), exactly as `training.data.batching` counts kpdd's."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.state.global_step >= steps:
                mask = inputs["attention_mask"]
                totals["real"] = totals["real"] + mask.sum()
                totals["slot"] = totals["slot"] + mask.numel()
                if kind == "seq2seq":
                    totals["real"] = totals["real"] + (inputs["labels"] != IGNORE_INDEX).sum()
                    totals["slot"] = totals["slot"] + inputs["labels"].numel()
            return super().training_step(model, inputs, num_items_in_batch)

    args = TrainingArguments(
        output_dir=str(run_dir / "hf-baseline"),
        per_device_train_batch_size=cfg.batch.micro_batch_size,
        gradient_accumulation_steps=cfg.batch.gradient_accumulation_steps or 1,
        max_steps=2 * steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        adam_epsilon=cfg.optim.eps,
        max_grad_norm=cfg.optim.grad_clip,
        bf16=dtype == "bf16",
        deepspeed=ds_config,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=cfg.train.seed,
    )
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Clock()]
    )
    trainer.train()
    seconds = marks[2 * steps] - marks[steps]
    real, slot = int(totals["real"]), int(totals["slot"])
    tokens_per_s = real / seconds
    if int(os.environ.get("RANK", "0")) == 0:
        document = {
            "run": "HF Trainer baseline, no packing",
            "tokens_per_s_per_gpu": tokens_per_s,
            "mfu": mfu(n_params, tokens_per_s, hardware.peak_bf16_flops(hardware.gpu_name())),
            "peak_memory_bytes": hardware.peak_memory_bytes(),
            "padding_efficiency": real / slot,
            "micro_batch_size": cfg.batch.micro_batch_size,
            "gradient_accumulation_steps": cfg.batch.gradient_accumulation_steps,
            "row_tokens": None,
            "attn_implementation": str(model.config._attn_implementation),
            "dtype": dtype,
            "train_examples": len(rows),
            "n_params": n_params,
            "optimizer": str(args.optim),
            "engine": type(trainer.model_wrapped).__name__,  # DeepSpeedEngine when DeepSpeed ran it
            "zero_stage": trainer.model_wrapped.zero_optimization_stage()
            if hasattr(trainer.model_wrapped, "zero_optimization_stage")
            else None,
            "timed_tokens": real,
            "timed_s": seconds,
        }
        result.write_text(json.dumps(document, default=str) + "\n")


# --- the run -------------------------------------------------------------------------------------


def snapshot_for(args: argparse.Namespace) -> Path:
    snapshot = args.snapshot or OUT / "snapshots" / f"gsm8k-pot-{args.problems}"
    if (snapshot / "manifest.json").is_file():
        print(f"snapshot: reusing {snapshot}", flush=True)
        return snapshot
    print(f"snapshot: building {snapshot} from {args.problems} GSM8K train problems (sim:gold, PoT)")
    build_snapshot(snapshot, args.problems, args.datasets)
    return snapshot


def bench_student(
    student: Student, args: argparse.Namespace, snapshot: Path, work: Path, texts: list[str]
) -> dict[str, Any]:
    hf_config = student.smoke_hf_config if args.smoke else student.hf_config
    sizes = student.smoke_sizes if args.smoke else student.sizes
    vocab = SMOKE_TOKENIZER_VOCAB if args.smoke else TOKENIZER_VOCAB
    sets = list(SMOKE_SETS) if args.smoke else []
    sets.append(f"data.tokenizer_vocab_size={vocab}")
    model: dict[str, Any] = {"vocab": args.vocab}
    if args.vocab == "real":
        directory = work / f"{student.key}-random-weights"
        started = time.perf_counter()
        model |= write_random_model(student, hf_config, texts, vocab, directory)
        print(f"  random weights written in {time.perf_counter() - started:.1f} s: {model}", flush=True)
        sets.append(f"model.path={directory}")
    else:
        sets += ["model.path=null", *(f"model.{k}={v}" for k, v in sizes.items())]
    if student.kind == "causal" and importlib.util.find_spec("flash_attn") is None:
        # The recipe asks for flash_attention_2; without flash-attn, sdpa with 4D block masks.
        sets.append("model.attn_implementation=sdpa")
    runs = []
    for packing in student.packing:
        name = f"{student.key}-{'packing' if packing else 'no-packing'}"
        print(f"  {name}: kpdd ({2 * args.steps} steps)", flush=True)
        runs.append(kpdd_run(student, sets, packing, snapshot, work / name, args.steps))
        print(f"    {_line(runs[-1])}", flush=True)
    print(f"  {student.key}: HF Trainer baseline ({2 * args.steps} steps)", flush=True)
    runs.append(baseline_run(Path(runs[-1]["run_dir"]), args.steps))
    print(f"    {_line(runs[-1])}", flush=True)
    baseline = runs[-1]["tokens_per_s_per_gpu"]
    model.setdefault("n_params", runs[-1]["n_params"])
    return {
        "student": student.key,
        "label": student.label + (" (smoke: tiny)" if args.smoke else ""),
        "recipe": student.recipe,
        "model": model,
        "runs": runs,
        "ratios_tokens_per_s": {r["run"]: r["tokens_per_s_per_gpu"] / baseline for r in runs[:-1]},
    }


def _line(run: dict[str, Any]) -> str:
    mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "n/a"
    return (
        f"{run['tokens_per_s_per_gpu']:,.0f} tokens/s, MFU {mfu}, peak {run['peak_memory_bytes'] / 2**30:.2f}"
        f" GiB, padding efficiency {run['padding_efficiency']:.1%}, {run['wall_s']} s wall"
    )


def measured_matmul_tflops() -> float | None:
    """bf16 8192^3 matrix products on this GPU (3 warm-up, 10 timed): the achievable ceiling."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def machine() -> dict[str, Any]:
    import deepspeed
    import torch
    import transformers

    from training import hardware

    gpu = hardware.gpu_name()
    peak = hardware.peak_bf16_flops(gpu)
    entry = next(
        (f"{k}: {v}" for k, v in hardware.PEAK_BF16_TFLOPS if gpu and k.lower() in gpu.lower()), None
    )
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "gpu": gpu,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "mfu_peak_tflops": peak / 1e12 if peak else None,
        "mfu_peak_source": (
            f"training/hardware.py PEAK_BF16_TFLOPS ({entry} TFLOPS, dense bf16, vendor datasheet)"
            if entry
            else "none: no GPU, or a GPU not in training/hardware.py (MFU is null)"
        ),
        "measured_matmul_tflops": measured_matmul_tflops(),
    }


def print_table(results: list[dict[str, Any]], facts: dict[str, Any], steps: int) -> None:
    print(f"\n{facts['gpu'] or 'CPU (rehearsal: not a performance figure)'}, {facts['date']}, ", end="")
    print(f"torch {facts['torch']}, transformers {facts['transformers']}, deepspeed {facts['deepspeed']}")
    print(f"warm-up {steps} optimizer steps excluded, {steps} timed; MFU peak: {facts['mfu_peak_source']}\n")
    print("| model | run | tokens/s/GPU | MFU | peak memory | padding efficiency | ratio to baseline |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        for run in result["runs"]:
            ratio = result["ratios_tokens_per_s"].get(run["run"])
            mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "n/a"
            print(
                f"| {result['label']} ({result['model']['n_params'] / 1e6:,.1f} M) | {run['run']} |"
                f" {run['tokens_per_s_per_gpu']:,.0f} | {mfu} | {run['peak_memory_bytes'] / 2**30:.2f} GiB |"
                f" {run['padding_efficiency']:.1%} | {f'{ratio:.2f}x' if ratio else '1.00'} |"
            )
    for result in results:
        for run in result["runs"]:
            if run.get("epoch_started_in_timed_window"):
                name = f"{result['student']}, {run['run']}"
                print(f"warning: {name}: an epoch began in the timed window; raise --problems")
    decoder = next((r for r in results if r["student"] == "decoder"), None)
    if decoder and facts["gpu"]:
        packed = decoder["runs"][0]
        ratio = decoder["ratios_tokens_per_s"][packed["run"]]
        mfu_ok = packed["mfu"] is not None and packed["mfu"] >= TARGET_MFU
        ratio_ok = ratio >= TARGET_RATIO
        print(
            f"\ntargets (decoder, packing): MFU >= {TARGET_MFU:.0%}: {'met' if mfu_ok else 'NOT met'};"
            f" >= {TARGET_RATIO}x the baseline: {'met' if ratio_ok else 'NOT met'} ({ratio:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU rehearsal: tiny models, short rows")
    parser.add_argument(
        "--steps", type=int, help="timed optimizer steps, after as many warm-up steps (10; smoke 3)"
    )
    parser.add_argument("--problems", type=int, help="GSM8K train problems in the snapshot (7473; smoke 200)")
    parser.add_argument("--only", choices=tuple(STUDENTS), help="one model only")
    parser.add_argument(
        "--vocab",
        choices=("real", "snapshot"),
        default="real",
        help="real: the real model's embedding rows (random weights in a model directory); "
        "snapshot: built from size fields, vocabulary = the snapshot tokenizer's",
    )
    parser.add_argument("--snapshot", type=Path, help="snapshot directory to reuse, or to build if missing")
    parser.add_argument("--snapshot-only", action="store_true", help="build the snapshot and stop")
    parser.add_argument("--datasets", type=Path, default=default_datasets(), help="folder holding gsm8k/")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default benchmarks/out/bench_training-DATE.json)"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep model directories and runs here (default: a temp dir)"
    )
    parser.add_argument("--baseline-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the launcher's
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.smoke else 10)
    args.problems = args.problems or (200 if args.smoke else 7473)
    if args.baseline_child:
        baseline_child(*args.baseline_child, steps=args.steps)
        return

    started = time.perf_counter()
    snapshot = snapshot_for(args)
    if args.snapshot_only:
        return
    texts = train_texts(snapshot)
    results = []
    with tempfile.TemporaryDirectory(prefix="kpdd-bench-training-") as tmp:
        work = args.work_dir or Path(tmp)
        for key in [args.only] if args.only else list(STUDENTS):
            print(f"{STUDENTS[key].label}, {STUDENTS[key].recipe}", flush=True)
            results.append(bench_student(STUDENTS[key], args, snapshot, work, texts))
    facts = machine()
    print_table(results, facts, args.steps)
    document = {
        "benchmark": "bench_training",
        "smoke": args.smoke,
        **facts,
        "warmup_steps": args.steps,
        "timed_steps": args.steps,
        "snapshot": {"path": str(snapshot), "problems": args.problems, "train_examples": len(texts) // 2},
        "results": results,
        "total_s": round(time.perf_counter() - started, 1),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    out = args.out or OUT / f"bench_training-{'smoke-' if args.smoke else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\n{out} written; {document['total_s']} s in all")


if __name__ == "__main__":
    main()
