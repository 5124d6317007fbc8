"""Task examples to token ids: the one definition of what a student reads and what it learns.

- seq2seq (T5-like): `source_ids` = `input </s>` (the encoder input); `target_ids` = `target </s>`
  (the labels; the model shifts them right behind the `<pad>` decoder start itself).
- causal (decoder-only): `source_ids` = the prompt `<s> input <sep>`; `target_ids` =
  `target </s>`. The training row is `source_ids + target_ids`; the loss covers `target_ids` only.
  Generation at evaluation starts from exactly the prompt (`causal_prompt_ids`, or
  `tokenizer(inputs)` which applies the same template) and stops at `</s>`.

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

from transformers import PreTrainedTokenizerFast

from training.data.snapshot import TaskExample
from training.data.tokenizer import BOS, BOS_ID, EOS_ID, SEP, SEP_ID, check_arch

_CHUNK = 4096  # examples tokenised per call: bounded memory, still parallel inside `tokenizers`


@dataclass(slots=True)
class Encoded:
    """One example's ids: the encoder input or causal prompt, and the labelled target."""

    source_ids: list[int]
    target_ids: list[int]


def format_causal_prompt(input_text: str) -> str:
    """The causal prompt as text (special tokens spelt out); encoding it with
    `add_special_tokens=False` gives `causal_prompt_ids(tokenizer, input_text)`."""
    return f"{BOS}{input_text}{SEP}"


def _content_ids(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        batch = list(texts[start : start + _CHUNK])
        ids += [e.ids for e in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False)]
    return ids


def _wrap_source(content: list[int], arch: str) -> list[int]:
    return [*content, EOS_ID] if arch == "seq2seq" else [BOS_ID, *content, SEP_ID]


def causal_prompt_ids(tokenizer: PreTrainedTokenizerFast, input_text: str) -> list[int]:
    """The ids a causal student is prompted with (untruncated): `<s> input <sep>`."""
    return _wrap_source(_content_ids(tokenizer, [input_text])[0], "causal")


def source_ids(tokenizer: PreTrainedTokenizerFast, input_text: str, *, arch: str) -> list[int]:
    """The encoder input (seq2seq) or prompt (causal) of one task input, untruncated."""
    check_arch(arch)
    return _wrap_source(_content_ids(tokenizer, [input_text])[0], arch)


def encode(
    examples: Sequence[TaskExample],
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: str,
    max_source_tokens: int,
    max_target_tokens: int,
) -> tuple[list[Encoded], dict[str, int]]:
    """Encode every example, in order. Stats: `examples`, `truncated_sources`,
    `truncated_targets`, `source_tokens` and `target_tokens` (after truncation), and
    `longest_source` / `longest_target` (before truncation, to size the limits)."""
    check_arch(arch)
    specials = 1 if arch == "seq2seq" else 2
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
            labelled = [*target, EOS_ID]
        item = Encoded(_wrap_source(kept, arch), labelled)
        stats["source_tokens"] += len(item.source_ids)
        stats["target_tokens"] += len(item.target_ids)
        encoded.append(item)
    stats["examples"] = len(encoded)
    return encoded, stats
