"""Students from local "pretrained" directories whose tokenizers are not kpdd's (Qwen2.5-like,
Llama 3-like, T5-like; see `tests.training.pretrained`).

Fast, in this process: the special ids are read from the tokenizer (`specials_of`), a causal
tokenizer gains `<sep>` (`adapt_pretrained`), prompts and labels use the tokenizer's own ids, and
the embedding is resized only when the tokenizer outgrew it. Slow, launched as `kpdd train` runs
them: `training.prepare` + `training.train` (one process, a few steps) on each directory, then
`python -m training.evaluate` on its final/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.training.pretrained import SPARE_ROWS, llama_like, qwen_like, t5_like
from tests.training.snapshots import write_snapshot
from tests.training.test_train import COMMON, ROOT, _env, _metrics, _status, prepare, train
from training.config import resolve
from training.data import (
    Specials,
    adapt_pretrained,
    build_tokenizer,
    encode,
    format_causal_prompt,
    load_tokenizer,
    read_tasks,
    source_ids,
    specials_of,
)
from training.model import build_model, load_pretrained_tokenizer

CONFIGS = ROOT / "training" / "configs"
BUILDERS = {"qwen": qwen_like, "llama": llama_like, "t5": t5_like}
ARCHS = {"qwen": "qwen2", "llama": "llama", "t5": "t5"}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return write_snapshot(tmp_path_factory.mktemp("pretrained") / "snapshot")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, snapshot) -> dict[str, Path]:
    """name -> a saved "pretrained" directory, its tokenizer trained on the snapshot's texts."""
    texts = [t for e in read_tasks(snapshot, None) for t in (e.input, e.target)]
    root = tmp_path_factory.mktemp("models")
    return {name: build(root / name, texts) for name, build in BUILDERS.items()}


def _config(name: str, path: Path, *extra: str):
    base = "tiny-t5.yaml" if name == "t5" else "tiny-llama.yaml"
    return resolve(CONFIGS / base, [f"model.arch={ARCHS[name]}", f"model.path={path}", *extra], 1)


def test_on_the_spot_tokenizers_keep_their_fixed_ids(snapshot):
    texts = [t for e in read_tasks(snapshot, None) for t in (e.input, e.target)]
    causal = build_tokenizer(texts, vocab_size=400, arch="causal")
    assert specials_of(causal) == Specials(pad_id=0, eos_id=1, bos_id=3, sep_id=4)
    seq2seq = build_tokenizer(texts, vocab_size=400, arch="seq2seq")
    assert specials_of(seq2seq) == Specials(pad_id=0, eos_id=1, bos_id=None, sep_id=None)
    assert adapt_pretrained(causal, "causal") is causal and specials_of(causal) == Specials(0, 1, 3, 4)


@pytest.mark.parametrize("name", ["qwen", "llama"])
def test_a_causal_tokenizer_gains_sep_and_prompts_with_its_own_ids(name, model_dirs, snapshot, tmp_path):
    tokenizer = load_tokenizer(model_dirs[name])
    before = len(tokenizer)
    original = specials_of(tokenizer)
    assert original.sep_id is None and original.eos_id >= before - 3  # high ids, after the merges
    examples = read_tasks(snapshot, None)
    with pytest.raises(ValueError, match="<sep>"):
        encode(examples, tokenizer, arch="causal", max_source_tokens=256, max_target_tokens=256)

    adapt_pretrained(tokenizer, "causal")
    specials = specials_of(tokenizer)
    assert len(tokenizer) == before + 1 and specials.sep_id == before
    assert specials.eos_id == original.eos_id
    if name == "qwen":  # its own pad; no bos, so a prompt starts with the input
        assert (specials.pad_id, specials.bos_id) == (original.pad_id, None)
    else:  # no pad token: pads with eos; prompts start with its bos
        assert tokenizer.pad_token == tokenizer.eos_token and specials.bos_id == original.bos_id
    encoded, stats = encode(examples, tokenizer, arch="causal", max_source_tokens=256, max_target_tokens=256)
    assert stats["truncated_targets"] == 0
    for example, item in zip(examples, encoded, strict=True):
        assert item.target_ids[-1] == specials.eos_id and specials.eos_id not in item.target_ids[:-1]
        assert item.source_ids[-1] == specials.sep_id
        assert (item.source_ids[0] == specials.bos_id) == (name == "llama")
        prompt = format_causal_prompt(example.input, tokenizer)
        assert item.source_ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(encoded[0].source_ids, skip_special_tokens=True)
    assert decoded == examples[0].input  # <sep> (and bos) are special: skipped

    # Saved and read back (DIR/tokenizer, final/): the same ids, so evaluation prompts as training.
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    assert specials_of(loaded) == specials and len(loaded) == len(tokenizer)
    assert source_ids(loaded, examples[3].input, arch="causal") == encoded[3].source_ids


def test_a_tokenizer_without_eos_is_refused():
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="no eos"):
        specials_of(NoEos())


@pytest.mark.parametrize(("name", "resized"), [("qwen", False), ("llama", True), ("t5", False)])
def test_the_embedding_grows_only_when_the_tokenizer_outgrew_it(name, resized, model_dirs):
    cfg = _config(name, model_dirs[name])
    tokenizer = load_pretrained_tokenizer(cfg.model)
    saved_rows = len(load_tokenizer(model_dirs[name])) + (0 if name == "llama" else SPARE_ROWS)
    model = build_model(cfg.model, len(tokenizer), specials_of(tokenizer))
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == (len(tokenizer) if resized else saved_rows)
    assert len(tokenizer) == saved_rows + 1 if resized else len(tokenizer) < saved_rows
    assert model.get_output_embeddings().weight.shape[0] == rows
    assert model.config.vocab_size == rows


# --- launched runs -----------------------------------------------------------------------------

RUN = [*COMMON, "train.max_steps=4", "train.save_every_steps=null", "train.log_every_steps=1"]
EXTRA = {
    # Packed rows with a block mask built as each micro batch is consumed, padded with eos.
    "qwen": ["data.packing=true", "data.max_seq_len=512", "model.attn_implementation=sdpa"],
    "llama": [],
    "t5": [],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, snapshot, model_dirs) -> dict[str, Path]:
    done = {}
    for name, path in model_dirs.items():
        run_dir = tmp_path_factory.mktemp(f"run-{name}") / "run"
        base = "tiny-t5.yaml" if name == "t5" else "tiny-llama.yaml"
        overrides = [*RUN, f"model.arch={ARCHS[name]}", f"model.path={path}", *EXTRA[name]]
        prepare(run_dir, snapshot, base, 1, overrides)
        finished = train(run_dir, 1)
        assert finished.returncode == 0, finished.stderr[-3000:]
        done[name] = run_dir
    return done


def _evaluate(final: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    items = tmp_path / "items.jsonl"
    rows = [
        {
            "dataset": "toy",
            "item_id": str(n),
            "question": f"Tom has {n} apples and buys 3. How many?",
            "gold": "7",
        }
        for n in range(3)
    ]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [sys.executable, "-m", "training.evaluate", "--model", str(final), "--items", str(items)]
    argv += ["--out", str(out), "--mode", "cot", "--max-new-tokens", "8", "--device", "cpu"]
    return subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen", "llama"])
def test_a_causal_checkpoint_trains_and_evaluates_with_its_tokenizer(
    name, runs, model_dirs, snapshot, tmp_path
):
    run_dir, final = runs[name], runs[name] / "final"
    assert _status(run_dir)["state"] == "succeeded"
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3, 4]
    original = load_tokenizer(model_dirs[name])
    tokenizer = load_tokenizer(final)
    specials = specials_of(tokenizer)
    assert tokenizer.convert_ids_to_tokens(specials.sep_id) == "<sep>" and specials.sep_id == len(original)
    assert specials.eos_id == original.eos_token_id
    assert specials_of(load_tokenizer(run_dir / "tokenizer")) == specials  # what training encoded with

    # Labels end with the tokenizer's eos; the samples were prompted exactly as evaluation prompts.
    examples = read_tasks(snapshot, None)
    encoded, _ = encode(examples, tokenizer, arch="causal", max_source_tokens=256, max_target_tokens=160)
    assert all(item.target_ids[-1] == specials.eos_id for item in encoded)
    samples = json.loads((final / "kpdd_samples.json").read_text())
    for sample in samples:
        assert sample["prompt_ids"] == source_ids(tokenizer, sample["input"], arch="causal")
        assert sample["prompt_ids"][-1] == specials.sep_id

    weights = load_file(final / "model.safetensors")
    rows = weights["model.embed_tokens.weight"].shape[0]
    assert rows == (len(original) + SPARE_ROWS if name == "qwen" else len(original) + 1)

    out = tmp_path / "eval"
    done = _evaluate(final, out, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["item_id"] for p in predictions] == ["0", "1", "2"]


@pytest.mark.slow
def test_a_t5_like_checkpoint_trains_and_evaluates(runs, model_dirs, tmp_path):
    run_dir, final = runs["t5"], runs["t5"] / "final"
    assert _status(run_dir)["state"] == "succeeded"
    tokenizer = load_tokenizer(final)
    assert specials_of(tokenizer) == Specials(pad_id=0, eos_id=1)
    assert len(tokenizer) == len(load_tokenizer(model_dirs["t5"]))  # nothing added
    assert load_file(final / "model.safetensors")["shared.weight"].shape[0] == len(tokenizer) + SPARE_ROWS
    done = _evaluate(final, tmp_path / "eval", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 3
