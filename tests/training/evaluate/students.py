"""Tiny random students for evaluation tests: a tokenizer trained on the spot, a model from a
config (a few thousand parameters), saved like training saves them, with `kpdd_student.json`.

The tokenizer comes from training's own builder (`training.data.build_tokenizer`). Weights are
initialised with a large `initializer_range` so that outputs depend on the input: with the
default 0.02 a tiny model writes nearly the same text for every prompt, and a padding bug would
go unseen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from services.kpdd.formatting import LAYOUT_TASKS, format_key_points, format_student_input
from services.kpdd.records import KeyPoints
from training.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
from training.evaluate.items import EvalItem

MAX_TARGET_TOKENS = 16


def gsm8k_items(datasets_dir: Path, n: int, dataset: str = "gsm8k-test") -> list[EvalItem]:
    """The first `n` GSM8K test problems, gold as the source wrote it (after `####`)."""
    items = []
    with (datasets_dir / "gsm8k" / "test.jsonl").open(encoding="utf-8") as fh:
        for index, line in zip(range(n), fh, strict=False):
            record = json.loads(line)
            gold = record["answer"].rsplit("####", 1)[1].strip()
            items.append(EvalItem(dataset, str(index), record["question"], gold))
    return items


def tokenizer_texts(items: Sequence[EvalItem]) -> list[str]:
    """Student-shaped texts to train the tokenizer on (inputs and answer-format targets)."""
    texts = []
    for item in items:
        for task in ("end-to-end", "core-question", "solving-info", "solution"):
            texts.append(format_student_input(task, "cot", item.question))
        key_points = KeyPoints("How many?", ["There are 3 apples."], "3 + 4 = 7", "7")
        texts.append(format_key_points(key_points))
        texts.append("```python\nans = 3 + 4\n```")
    return texts


def build_model(arch: str, vocab_size: int, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    if arch == "seq2seq":
        config = T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=PAD_ID,
            initializer_factor=8.0,
        )
        return T5ForConditionalGeneration(config).eval()
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        max_position_embeddings=4096,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config).eval()


def save_student(
    directory: Path,
    arch: str,
    texts: Sequence[str],
    *,
    layout: str = "end-to-end",
    modes: Sequence[str] = ("cot",),
    max_target_tokens: int = MAX_TARGET_TOKENS,
) -> Path:
    """A student folder as training writes it: weights, tokenizer and `kpdd_student.json`."""
    tokenizer = build_tokenizer(texts, vocab_size=400, arch=arch)
    model = build_model(arch, len(tokenizer))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    write_student_info(directory, arch, layout=layout, modes=modes, max_target_tokens=max_target_tokens)
    return directory


def write_student_info(
    directory: Path,
    arch: str,
    *,
    layout: str = "end-to-end",
    modes: Sequence[str] = ("cot",),
    max_target_tokens: int = MAX_TARGET_TOKENS,
) -> None:
    info = {
        "arch": arch,
        "model_type": "t5" if arch == "seq2seq" else "llama",
        "layout": layout,
        "tasks": list(LAYOUT_TASKS[layout]),
        "modes": list(modes),
        "max_source_tokens": 512,
        "max_target_tokens": max_target_tokens,
        "snapshot_id": "test-snapshot",
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kpdd_student.json").write_text(json.dumps(info), encoding="utf-8")
