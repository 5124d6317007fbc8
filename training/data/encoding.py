"""Task examples to token ids: the one definition of what a student reads and what it learns.

Special tokens are the tokenizer's own, read once per call with `specials_of` (written below as
`<s>`, `<sep>` and `</s>`, the names the on-the-spot tokenizer gives them):

- seq2seq (T5-like): `source_ids` = `input </s>` (the encoder input); `target_ids` = `target </s>`
  (the labels; the model shifts them right behind its decoder start token itself).
- causal (decoder-only): `source_ids` = the prompt `<s> input <sep>` (`input <sep>` when the
  tokenizer has no bos, as Qwen2.5's); `target_ids` = `target </s>`. The training row is
  `source_ids + target_ids`; the loss covers `target_ids` only. Generation at evaluation starts
  from exactly the prompt (`source_ids`; with the on-the-spot tokenizer also `tokenizer(inputs)`,
  which applies the same template) and stops at `</s>`.

`<sep>` is a special token, not text: an input that itself contains blank lines (every staged
input does) still has one unambiguous end. A literal `<sep>` or `</s>` string in an input would
be read as the special token; the export never writes one.

Limits, applied per example and counted in the returned stats (the caller logs them, nothing is
dropped silently):

- a source longer than `max_source_tokens` keeps its first tokens (the header line and the
  problem come first) and still ends with its end token (`</s>` or `<sep>`);
- a target longer than `max_target_tokens` keeps its first `max_target_tokens` tokens and gets
  no `</s>`, so the student never learns to stop in the middle of an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.data.snapshot import TaskExample
from training.data.tokenizer import BOS, SEP, check_arch, specials_of

_CHUNK = 4096  # examples tokenised per call: bounded memory, still parallel inside `tokenizers`


@dataclass(slots=True)
class Encoded:
    """One example's ids: the encoder input or causal prompt, and the labelled target."""

    source_ids: list[int]
    target_ids: list[int]


def format_causal_prompt(input_text: str, tokenizer: Any = None) -> str:
    """The causal prompt as text (special tokens spelt out; `tokenizer`'s bos, none when it has
    none; None: the on-the-spot tokenizer's `<s>`); encoding it with `add_special_tokens=False`
    gives `causal_prompt_ids(tokenizer, input_text)`."""
    bos = BOS if tokenizer is None else tokenizer.bos_token or ""
    return f"{bos}{input_text}{SEP}"


def _content_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        batch = list(texts[start : start + _CHUNK])
        ids += [e.ids for e in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False)]
    return ids


def causal_prompt_ids(tokenizer: Any, input_text: str) -> list[int]:
    """The ids a causal student is prompted with (untruncated): `<s> input <sep>`."""
    return source_ids(tokenizer, input_text, arch="causal")


def source_ids(tokenizer: Any, input_text: str, *, arch: str) -> list[int]:
    """The encoder input (seq2seq) or prompt (causal) of one task input, untruncated."""
    return sources_ids(tokenizer, [input_text], arch=arch)[0]


def sources_ids(tokenizer: Any, input_texts: Sequence[str], *, arch: str) -> list[list[int]]:
    """`source_ids` of many task inputs, in order, tokenised in batches."""
    check_arch(arch)
    specials = specials_of(tokenizer)
    return [specials.source(content, arch) for content in _content_ids(tokenizer, input_texts)]


def encode(
    examples: Sequence[TaskExample],
    tokenizer: Any,
    *,
    arch: str,
    max_source_tokens: int,
    max_target_tokens: int,
) -> tuple[list[Encoded], dict[str, int]]:
    """Encode every example, in order. Stats: `examples`, `truncated_sources`,
    `truncated_targets`, `source_tokens` and `target_tokens` (after truncation), and
    `longest_source` / `longest_target` (before truncation, to size the limits)."""
    check_arch(arch)
    ids = specials_of(tokenizer)
    specials = ids.source_overhead(arch)
    ids.source([], arch)  # a causal tokenizer without <sep> is refused here, before any work
    if max_source_tokens <= specials or max_target_tokens < 1:
        raise ValueError(
            f"max_source_tokens must exceed {specials} and max_target_tokens be at least 1 "
            f"(got {max_source_tokens}, {max_target_tokens})"
        )
    sources = _content_ids(tokenizer, [e.input for e in examples])
    targets = _content_ids(tokenizer, [e.target for e in examples])
    stats = dict.fromkeys(
        (
            "examples",
            "truncated_sources",
            "truncated_targets",
            "source_tokens",
            "target_tokens",
            "longest_source",
            "longest_target",
        ),
        0,
    )
    encoded: list[Encoded] = []
    for source, target in zip(sources, targets, strict=True):
        stats["longest_source"] = max(stats["longest_source"], len(source) + specials)
        stats["longest_target"] = max(stats["longest_target"], len(target) + 1)
        if len(source) + specials > max_source_tokens:
            stats["truncated_sources"] += 1
        kept = source[: max_source_tokens - specials]
        if len(target) + 1 > max_target_tokens:
            stats["truncated_targets"] += 1
            labelled = target[:max_target_tokens]
        else:
            labelled = [*target, ids.eos_id]
        item = Encoded(ids.source(kept, arch), labelled)
        stats["source_tokens"] += len(item.source_ids)
        stats["target_tokens"] += len(item.target_ids)
        encoded.append(item)
    stats["examples"] = len(encoded)
    return encoded, stats
