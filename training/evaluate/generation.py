"""Batched greedy generation from a student, behind one seam: `GenerateFn`.

The evaluation chain calls a `GenerateFn` once per stage with every input of that stage and
gets back one output per input, in the same order. `StudentGenerator` is the real one; tests and
in-process callers may pass any function of that shape (returning plain strings is allowed).

`StudentGenerator` contract:
- Inputs are encoded exactly as training encoded sources (`training.data.encoding.source_ids`:
  seq2seq `input </s>`, causal `<s> input <sep>`, in the tokenizer's own special tokens, read
  once with `specials_of`: a pretrained tokenizer's eos, no `<s>` when it has no bos, the
  `<sep>` training added), and an input longer than the student's `max_source_tokens` is cut
  the way training cut it: its first tokens, then the end token. `Generation.input_tokens` is
  the length before cutting, so a report can count the cut ones.
- Greedy decoding (`do_sample=False`, `num_beams=1`), at most `max_new_tokens` new tokens,
  stopping at the tokenizer's eos. Decoder-only batches are padded on the LEFT (with the pad
  id, else the eos) with an attention mask, so every prompt ends where generation starts and
  the output equals unbatched generation.
- Inputs are sorted by token length (longest first, so a batch that cannot fit in memory fails
  at once) and batched; outputs come back in input order.
- The prompt is stripped from causal outputs; the text is the new tokens up to the first
  eos, decoded with training's `decode_text` (special tokens skipped, no space clean-up:
  programs must run as written). `stopped` is False when the output was cut at `max_new_tokens`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Generation:
    """One generated output: its text, whether it ended on its own (`</s>`), and token counts."""

    text: str
    stopped: bool = True
    new_tokens: int | None = None
    input_tokens: int | None = None


GenerateFn = Callable[[Sequence[str]], Sequence["str | Generation"]]


def as_generation(output: str | Generation) -> Generation:
    return output if isinstance(output, Generation) else Generation(str(output))


def prompt_ids(tokenizer: Any, texts: Sequence[str], arch: str) -> list[list[int]]:
    """Each input's ids as training built them (`training.data.encoding.source_ids`), uncut."""
    from training.data.encoding import sources_ids

    return sources_ids(tokenizer, texts, arch=arch)


def cut_source(ids: list[int], max_source_tokens: int | None) -> list[int]:
    """`ids` cut the way training cut sources: the first tokens, then the end token."""
    if max_source_tokens is None or len(ids) <= max_source_tokens:
        return ids
    return [*ids[: max_source_tokens - 1], ids[-1]]


class StudentGenerator:
    """Greedy batched generation with a loaded model and tokenizer (see the module docstring).

    `arch` is `seq2seq` or `causal`; `max_source_tokens` is the student's (None: never cut).
    Counters `calls`, `new_tokens` and `cut_at_limit` add up
    over the generator's life, for throughput figures.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        arch: str,
        batch_size: int = 32,
        max_new_tokens: int = 256,
        max_source_tokens: int | None = None,
        device: str | None = None,
    ) -> None:
        if arch not in ("seq2seq", "causal"):
            raise ValueError(f"arch must be seq2seq or causal, got {arch!r}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        self.model, self.tokenizer, self.arch = model, tokenizer, arch
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        if max_source_tokens is not None and max_source_tokens < 3:
            raise ValueError("max_source_tokens must be at least 3")
        self.max_source_tokens = max_source_tokens
        # imports transformers: not at module load
        from training.data.tokenizer import decode_text, specials_of

        self._decode_text = decode_text
        self.device = device or str(next(model.parameters()).device)
        # Decoder-only batches must end where generation starts; encoder inputs pad on the right.
        # Passed per call rather than set on the tokenizer, which a training process may share.
        self.padding_side = "left" if arch == "causal" else "right"
        self.specials = specials_of(tokenizer)  # ValueError without an eos token
        self.calls = 0
        self.new_tokens = 0
        self.cut_at_limit = 0

    def __call__(self, inputs: Sequence[str]) -> list[Generation]:
        if not inputs:
            return []
        full = prompt_ids(self.tokenizer, inputs, self.arch)
        lengths = [len(row) for row in full]
        ids = [cut_source(row, self.max_source_tokens) for row in full]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        outputs: list[Generation | None] = [None] * len(ids)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for index, generation in zip(batch, self._generate([ids[i] for i in batch]), strict=True):
                generation.input_tokens = lengths[index]
                outputs[index] = generation
        self.calls += 1
        return [g for g in outputs if g is not None]

    def _generate(self, batch_ids: list[list[int]]) -> list[Generation]:
        import torch

        width = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), width), self.specials.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            columns = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, columns] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        options: dict[str, Any] = {
            "do_sample": False,
            "num_beams": 1,
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": self.specials.pad_id,
            "eos_token_id": self.specials.eos_id,
        }
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        # Causal: the prompt (padded width) comes back first. Seq2seq: the decoder start token.
        new = out[:, input_ids.shape[1] :] if self.arch == "causal" else out[:, 1:]
        return [self._decode(row) for row in new.tolist()]

    def _decode(self, row: list[int]) -> Generation:
        eos = self.specials.eos_id
        stopped = eos in row
        tokens = row[: row.index(eos)] if stopped else row
        if not stopped:
            self.cut_at_limit += 1
        self.new_tokens += len(tokens) + int(stopped)
        text = self._decode_text(self.tokenizer, tokens)
        return Generation(text, stopped, len(tokens) + int(stopped))
