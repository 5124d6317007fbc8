"""Encoded examples to micro batches, deterministic for (seed, epoch), built lazily.

Tensors per micro batch (all int64 except a 4D mask):

- seq2seq (T5): `input_ids` [b, S] (padded with `pad_id`), `attention_mask` [b, S] (1 real,
  0 pad), `labels` [b, T] (-100 on padding; the model builds its decoder inputs from them).
- causal: `input_ids`, `labels`, `position_ids` [b, L] and an attention mask. Labels are aligned
  with `input_ids` (the loop, or the model's loss, shifts them by one) and are -100 on prompt
  tokens and padding, so only `target_ids` (target + `</s>`) are learnt. Every sequence starts
  with its prompt (`<s>` or the input, then `<sep>`), whose labels are -100: no position learns
  to predict across a boundary between packed sequences.

`pad_id` is the tokenizer's (`specials_of(tokenizer).pad_id`); padded positions are masked and
unlabelled, so any id would do, but the tokenizer's keeps the rows readable.

Plan now, tensors later: `make_micro_batches` decides every micro batch of the epoch up front
(which sequences, in which row, in which order), but a `MicroBatch` holds only references to the
encoded sequences and its counts. Its tensors are built when it is consumed (`build(device)`;
`tensors` builds them on the CPU). A packed sdpa/eager micro batch's mask is [b, 1, L, L] (4 MiB
per row at L = 2048 in bool, gigabytes per rank for a GSM8K-sized epoch if every one were kept):
`build` makes it on the device from the [b, L] segment ids, for one forward pass.

Without packing, sequences are padded on the right to the longest of their micro batch, and
batches are grouped by length: the shuffled order is cut into buckets of `64 * micro_batch_size`,
each bucket is sorted by length and cut into micro batches, and the micro batches are shuffled.
The causal `attention_mask` is the 2D padding mask [b, L] and `position_ids` count 0, 1, ...

With `packing=True` (causal only), whole sequences are packed best-fit-decreasing into rows of at
most `max_seq_len` tokens (a sequence is never split), the rows are shuffled and taken
`micro_batch_size` at a time, and `position_ids` restart at 0 at each sequence start. Packed
sequences must not see each other; how depends on the attention implementation
(`packing_attention(attn_implementation, dtype)` gives the arguments):

- `sdpa`: `attention_mask` is a 4D block-diagonal causal mask [b, 1, L, L], dtype `torch.bool`,
  True where a query may attend to a key. transformers (5.x `masking_utils`) passes a 4D mask to
  the attention function as it is.
- `eager`: the same mask made additive in the model's compute dtype (0 where allowed, the
  dtype's minimum elsewhere), because eager attention adds the mask to the scores; a bool mask
  there would be added as 0/1 and silently mask nothing.
- `flash_attention_2`/`_3` (the GPU path): `varlen=True`. No attention mask at all; the rows of a
  micro batch are concatenated into one unpadded row [1, N] and transformers derives the
  flash-attn varlen boundaries from `position_ids` (it does so only for batch size 1). The same
  tensors also work on sdpa/eager, where transformers builds the block mask from
  `position_ids` when no mask is given, but only with `use_cache=False` (a cache disables it):
  always pass `use_cache=False` in training.

Padding in a packed row (after its last sequence) forms its own segment that attends only to
itself, so no softmax row is empty (an all-masked row gives NaN in sdpa).

A micro batch counts `target_tokens` (labels != -100, the loss denominator), `real_tokens` and
`slot_tokens` (positions computed, padding included; `real/slot` is the padding efficiency).
Splitting micro batches across data-parallel ranks is the caller's job.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from training.data.encoding import Encoded
from training.data.tokenizer import check_arch

IGNORE_INDEX = -100
BUCKET_MICRO_BATCHES = 64  # micro batches per length-sorted bucket: less padding vs. more mixing


@dataclass(slots=True)
class MicroBatch:
    """One forward pass, planned: the sequences of each row (one per row unless packed), their
    layout, and the counts the loop needs for the loss and its logs. It holds no tensors;
    `build` makes them when the micro batch is consumed."""

    form: str  # seq2seq | causal (padded rows) | packed (block mask) | varlen (one flat row)
    rows: list[list[Encoded]]
    pad_id: int
    mask_dtype: torch.dtype
    target_tokens: int
    real_tokens: int
    slot_tokens: int
    sequences: int

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.slot_tokens if self.slot_tokens else 1.0

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors on the CPU, built anew at each access (see `build`)."""
        return self.build()

    def build(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The forward pass's tensors on `device` (None: the CPU). A packed block mask is made
        there from the segment ids, so only [b, L] tensors are copied to the device."""
        if self.form == "seq2seq":
            tensors = _seq2seq_tensors([row[0] for row in self.rows], self.pad_id)
        elif self.form == "causal":
            tensors = _causal_tensors([row[0] for row in self.rows], self.pad_id)
        elif self.form == "varlen":
            tensors = _varlen_tensors(self.rows)
        else:
            tensors = _packed_tensors(self.rows, self.pad_id)
        if device is not None:
            tensors = {name: t.to(device, non_blocking=True) for name, t in tensors.items()}
        segments = tensors.pop("segment_ids", None)
        if segments is not None:
            tensors["attention_mask"] = block_causal_mask(segments, self.mask_dtype)
        return tensors


@dataclass(frozen=True, slots=True)
class PackingAttention:
    """How packed sequences are kept apart: `make_micro_batches(..., **choice.kwargs())`."""

    varlen: bool
    mask_dtype: torch.dtype

    def kwargs(self) -> dict[str, object]:
        return {"varlen": self.varlen, "mask_dtype": self.mask_dtype}


def packing_attention(attn_implementation: str, dtype: torch.dtype = torch.float32) -> PackingAttention:
    """The packing option for a model's `attn_implementation` and compute `dtype` (see above)."""
    if attn_implementation.startswith("flash_attention"):
        return PackingAttention(varlen=True, mask_dtype=torch.bool)
    if attn_implementation == "sdpa":
        return PackingAttention(varlen=False, mask_dtype=torch.bool)
    if attn_implementation == "eager":
        return PackingAttention(varlen=False, mask_dtype=dtype)
    raise ValueError(
        f"packing is not supported with attn_implementation {attn_implementation!r}; "
        "use sdpa, eager or flash_attention_2, or turn packing off"
    )


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """[b, 1, L, L] mask letting position q see key k when k <= q and both are in one segment:
    bool True = allowed, or additive (0 allowed, dtype minimum blocked) for a float dtype."""
    length, device = segment_ids.shape[1], segment_ids.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
    allowed = allowed[:, None]
    if dtype == torch.bool:
        return allowed
    if not dtype.is_floating_point:
        raise ValueError(f"mask_dtype must be torch.bool or a float dtype, not {dtype}")
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def make_micro_batches(
    encoded: Sequence[Encoded],
    *,
    arch: str,
    micro_batch_size: int,
    pad_id: int,
    packing: bool,
    max_seq_len: int,
    seed: int,
    epoch: int,
    varlen: bool = False,
    mask_dtype: torch.dtype = torch.bool,
) -> list[MicroBatch]:
    """Every example exactly once, in planned micro batches (their tensors are built when
    consumed); the same arguments give the same batches. `varlen` and `mask_dtype` apply to
    packing only. A sequence longer than `max_seq_len` (causal:
    prompt + target; seq2seq: source or target) is refused with ValueError."""
    check_arch(arch)
    if micro_batch_size < 1 or max_seq_len < 1:
        raise ValueError(
            f"micro_batch_size and max_seq_len must be positive ({micro_batch_size}, {max_seq_len})"
        )
    if packing and arch != "causal":
        raise ValueError("packing needs a causal (decoder-only) student; turn packing off for seq2seq")
    lengths = [
        len(e.source_ids) + len(e.target_ids)
        if arch == "causal"
        else max(len(e.source_ids), len(e.target_ids))
        for e in encoded
    ]
    too_long = sum(1 for n in lengths if n > max_seq_len)
    if too_long:
        raise ValueError(
            f"{too_long} sequences are longer than max_seq_len {max_seq_len} (longest {max(lengths)}); "
            "raise max_seq_len or lower max_source_tokens/max_target_tokens"
        )
    rng = random.Random(f"kpdd-batches:{seed}:{epoch}")
    order = list(range(len(encoded)))
    rng.shuffle(order)
    if packing:
        rows = _pack_rows(order, lengths, max_seq_len)
        rng.shuffle(rows)
        form = "varlen" if varlen else "packed"
        groups = [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
        return [_plan(form, [[encoded[i] for i in row] for row in g], pad_id, mask_dtype) for g in groups]
    chunks: list[list[int]] = []
    bucket = micro_batch_size * BUCKET_MICRO_BATCHES
    for start in range(0, len(order), bucket):
        part = sorted(order[start : start + bucket], key=lambda i: lengths[i], reverse=True)
        chunks += [part[i : i + micro_batch_size] for i in range(0, len(part), micro_batch_size)]
    rng.shuffle(chunks)
    return [_plan(arch, [[encoded[i]] for i in chunk], pad_id, torch.bool) for chunk in chunks]


def _pack_rows(order: list[int], lengths: list[int], max_seq_len: int) -> list[list[int]]:
    """Best-fit decreasing: longest first (ties in shuffled order), each into the fullest row
    that still has room, else a new row."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(order, key=lambda i: lengths[i], reverse=True):
        k = bisect.bisect_left(room, (lengths[i], -1))
        if k == len(room):
            rows.append([i])
            free, row = max_seq_len - lengths[i], len(rows) - 1
        else:
            free, row = room.pop(k)
            rows[row].append(i)
            free -= lengths[i]
        if free > 0:
            bisect.insort(room, (free, row))
    return rows


def _plan(form: str, rows: list[list[Encoded]], pad_id: int, mask_dtype: torch.dtype) -> MicroBatch:
    """The micro batch of `rows`, its counts computed from the lengths alone."""
    target = sum(len(e.target_ids) for row in rows for e in row)
    sequences = sum(len(row) for row in rows)
    if form == "seq2seq":
        sources = [len(row[0].source_ids) for row in rows]
        targets = [len(row[0].target_ids) for row in rows]
        real = sum(sources) + sum(targets)
        slots = len(rows) * (max(sources) + max(targets))
    else:
        lengths = [sum(len(e.source_ids) + len(e.target_ids) for e in row) for row in rows]
        real = sum(lengths)
        slots = real if form == "varlen" else len(rows) * max(lengths)
    return MicroBatch(form, rows, pad_id, mask_dtype, target, real, slots, sequences)


def _row_tensors(row: list[Encoded]) -> tuple[list[int], list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in row:
        ids += e.source_ids + e.target_ids
        labels += [IGNORE_INDEX] * len(e.source_ids) + e.target_ids
        positions += range(len(e.source_ids) + len(e.target_ids))
    return ids, labels, positions


def _varlen_tensors(rows: list[list[Encoded]]) -> dict[str, torch.Tensor]:
    built = [_row_tensors(row) for row in rows]
    flat = [list(chain.from_iterable(part[j] for part in built)) for j in range(3)]
    return {
        "input_ids": torch.tensor([flat[0]]),
        "labels": torch.tensor([flat[1]]),
        "position_ids": torch.tensor([flat[2]]),
    }


def _packed_tensors(rows: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """Padded packed rows and their `segment_ids` [b, L], from which `build` makes the mask."""
    built = [_row_tensors(row) for row in rows]
    width = max(len(ids) for ids, _, _ in built)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: the padding segment
    for r, (row, (ids, row_labels, row_positions)) in enumerate(zip(rows, built, strict=True)):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        labels[r, :n] = torch.tensor(row_labels)
        positions[r, :n] = torch.tensor(row_positions)
        positions[r, n:] = torch.arange(width - n)
        segments[r, :n] = torch.repeat_interleave(
            torch.arange(len(row)), torch.tensor([len(e.source_ids) + len(e.target_ids) for e in row])
        )
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "segment_ids": segments}


def _causal_tensors(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.source_ids) + len(e.target_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        ids, row_labels, _ = _row_tensors([e])
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(ids)] = torch.tensor(row_labels)
        attention[r, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention,
        "position_ids": torch.arange(width).expand(len(batch), width).clone(),
    }


def _seq2seq_tensors(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    source_width = max(len(e.source_ids) for e in batch)
    target_width = max(len(e.target_ids) for e in batch)
    input_ids = torch.full((len(batch), source_width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), source_width), dtype=torch.long)
    labels = torch.full((len(batch), target_width), IGNORE_INDEX, dtype=torch.long)
    for r, e in enumerate(batch):
        input_ids[r, : len(e.source_ids)] = torch.tensor(e.source_ids)
        attention[r, : len(e.source_ids)] = 1
        labels[r, : len(e.target_ids)] = torch.tensor(e.target_ids)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
