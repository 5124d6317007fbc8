"""Micro batches: packed sequences stay apart (checked against a real tiny Llama), padding
does not change a seq2seq loss, the order is a pure function of (seed, epoch), and an epoch's
plan holds no tensors (they are built as each micro batch is consumed)."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from tests.training.data.conftest import kpdd_examples
from training.data import (
    Encoded,
    TaskExample,
    encode,
    make_micro_batches,
    packing_attention,
)
from training.loop import DataPlan


def causal_encoded(tokenizer) -> list[Encoded]:
    extra = [
        TaskExample("solution", "cot", f"[solution | KPDD-CoT]\nQ{n}", f"The answer is: {n}")
        for n in range(5)
    ]
    encoded, _ = encode(
        [*kpdd_examples(), *extra], tokenizer, arch="causal", max_source_tokens=512, max_target_tokens=512
    )
    return encoded


def tiny_llama(vocab_size: int, attn_implementation: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=1,
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)
    with torch.no_grad():  # larger weights than the init, so that attending elsewhere shows in the loss
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.3)
    # float64, so that allclose(atol=1e-5) holds for summed losses of a few hundred nats
    return model.double().eval()


def token_losses(model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss of each labelled position (shifted as the loop does), 0 elsewhere; [b, L]."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in tensors.items() if k != "labels"}, use_cache=False).logits
    labels = tensors["labels"]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    return torch.nn.functional.pad(losses, (1, 0))


def per_sequence_losses(model, tensors: dict[str, torch.Tensor]) -> dict[tuple[int, ...], float]:
    """Summed target loss of every sequence in a (packed) batch, keyed by its token ids."""
    losses = token_losses(model, tensors)
    found = {}
    for ids, positions, row_losses, labels in zip(
        tensors["input_ids"], tensors["position_ids"], losses, tensors["labels"], strict=True
    ):
        starts = [*(positions == 0).nonzero().flatten().tolist(), len(ids)]
        for start, end in pairwise(starts):
            if (labels[start:end] != -100).any():  # a sequence, not the padding tail
                found[tuple(ids[start:end].tolist())] = float(row_losses[start:end].sum())
    return found


def alone_losses(model, encoded: list[Encoded]) -> dict[tuple[int, ...], float]:
    found = {}
    for e in encoded:
        ids = torch.tensor([e.source_ids + e.target_ids])
        labels = torch.tensor([[-100] * len(e.source_ids) + e.target_ids])
        found[tuple(ids[0].tolist())] = float(token_losses(model, {"input_ids": ids, "labels": labels}).sum())
    return found


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packing_keeps_sequences_apart(causal_tokenizer, attn_implementation):
    encoded = causal_encoded(causal_tokenizer)
    model = tiny_llama(len(causal_tokenizer), attn_implementation)
    choice = packing_attention(attn_implementation, torch.float64)
    batches = make_micro_batches(
        encoded, arch="causal", micro_batch_size=2, pad_id=0, packing=True, max_seq_len=400,
        seed=1, epoch=0, **choice.kwargs(),
    )  # fmt: skip
    assert any(b.sequences > b.tensors["input_ids"].shape[0] for b in batches), "nothing was packed"
    mask = batches[0].tensors["attention_mask"]
    assert mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == mask.shape[3]
    assert mask.dtype == (torch.bool if attn_implementation == "sdpa" else torch.float64)

    expected = alone_losses(model, encoded)
    packed: dict[tuple[int, ...], float] = {}
    for batch in batches:
        packed |= per_sequence_losses(model, batch.tensors)
    assert packed.keys() == expected.keys()
    got = torch.tensor([packed[k] for k in expected])
    want = torch.tensor(list(expected.values()))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    # Without the block mask (a plain padding mask over the packed rows) later sequences see
    # earlier ones, and their losses change: the check above can fail.
    leaky: dict[tuple[int, ...], float] = {}
    for batch in batches:
        tensors = dict(batch.tensors)
        tensors["attention_mask"] = (tensors["input_ids"] != 0).long()
        leaky |= per_sequence_losses(model, tensors)
    differences = torch.tensor([leaky[k] for k in expected]) - want
    assert differences.abs().max() > 1e-2


def test_varlen_rows_need_no_mask(causal_tokenizer):
    """The flash-attention layout (one unpadded row, boundaries in position_ids) on sdpa, where
    transformers derives the same block mask from position_ids."""
    encoded = causal_encoded(causal_tokenizer)
    model = tiny_llama(len(causal_tokenizer), "sdpa")
    batches = make_micro_batches(
        encoded, arch="causal", micro_batch_size=2, pad_id=0, packing=True, max_seq_len=400,
        seed=1, epoch=0, **packing_attention("flash_attention_2").kwargs(),
    )  # fmt: skip
    packed: dict[tuple[int, ...], float] = {}
    for batch in batches:
        assert "attention_mask" not in batch.tensors
        assert batch.tensors["input_ids"].shape[0] == 1
        assert batch.real_tokens == batch.slot_tokens == batch.tensors["input_ids"].numel()
        packed |= per_sequence_losses(model, batch.tensors)
    expected = alone_losses(model, encoded)
    torch.testing.assert_close(
        torch.tensor([packed[k] for k in expected]), torch.tensor(list(expected.values())), atol=1e-5, rtol=0
    )


def test_seq2seq_padding_does_not_change_the_loss(seq2seq_tokenizer):
    encoded, _ = encode(
        kpdd_examples(), seq2seq_tokenizer, arch="seq2seq", max_source_tokens=512, max_target_tokens=512
    )
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(seq2seq_tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    [batch] = make_micro_batches(
        encoded, arch="seq2seq", micro_batch_size=len(encoded), pad_id=0, packing=False, max_seq_len=512,
        seed=0, epoch=0,
    )  # fmt: skip
    assert batch.target_tokens == sum(len(e.target_ids) for e in encoded)
    assert batch.real_tokens < batch.slot_tokens
    with torch.no_grad():
        mean = model(**batch.tensors).loss
        alone = [
            model(input_ids=torch.tensor([e.source_ids]), labels=torch.tensor([e.target_ids])).loss
            * len(e.target_ids)
            for e in encoded
        ]
    torch.testing.assert_close(mean * batch.target_tokens, torch.stack(alone).sum(), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="packing needs a causal"):
        make_micro_batches(
            encoded,
            arch="seq2seq",
            micro_batch_size=2,
            pad_id=0,
            packing=True,
            max_seq_len=512,
            seed=0,
            epoch=0,
        )


@pytest.mark.parametrize("packing", [False, True])
def test_batches_are_deterministic_per_seed_and_epoch(causal_tokenizer, packing):
    encoded = causal_encoded(causal_tokenizer) * 4

    def order(seed: int, epoch: int) -> list[list[int]]:
        batches = make_micro_batches(
            encoded, arch="causal", micro_batch_size=3, pad_id=0, packing=packing, max_seq_len=400,
            seed=seed, epoch=epoch,
        )  # fmt: skip
        assert sum(b.sequences for b in batches) == len(encoded)
        assert all(0 < b.padding_efficiency <= 1 for b in batches)
        return [b.tensors["input_ids"].flatten().tolist() for b in batches]

    assert order(7, 0) == order(7, 0)
    assert order(7, 1) != order(7, 0)
    assert order(8, 0) != order(7, 0)


def test_length_grouping_cuts_padding(causal_tokenizer):
    encoded = causal_encoded(causal_tokenizer) * 4
    batches = make_micro_batches(
        encoded, arch="causal", micro_batch_size=4, pad_id=0, packing=False, max_seq_len=400, seed=0, epoch=0
    )
    grouped = sum(b.real_tokens for b in batches) / sum(b.slot_tokens for b in batches)
    width = max(len(e.source_ids) + len(e.target_ids) for e in encoded)
    naive = sum(len(e.source_ids) + len(e.target_ids) for e in encoded) / (len(encoded) * width)
    assert grouped > naive


def test_too_long_sequences_and_unknown_attention_are_refused(causal_tokenizer):
    encoded = causal_encoded(causal_tokenizer)
    with pytest.raises(ValueError, match="longer than max_seq_len 16"):
        make_micro_batches(
            encoded,
            arch="causal",
            micro_batch_size=2,
            pad_id=0,
            packing=True,
            max_seq_len=16,
            seed=0,
            epoch=0,
        )
    with pytest.raises(ValueError, match="attn_implementation"):
        packing_attention("paged_attention")


def _tensor_bytes(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from `obj` through dataclass fields, dicts, lists, tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_tensor_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return 0


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_the_epoch_plan_holds_no_masks(attn_implementation):
    """200 packed rows of 2048 tokens: built up front, their block masks alone would take 800 MiB
    (bool) or 3.2 GiB (fp32). The plan holds none; a micro batch builds its tensors when used."""
    length, rows = 2048, 200
    encoded = [Encoded([7] * 24, [9] * (length // 2 - 25) + [1]) for _ in range(2 * rows)]
    plan = DataPlan(
        encoded, "causal", 4, 1, 1, 0, 0, True, length, 0,
        packing_attention(attn_implementation, torch.float32).kwargs(),
    )  # fmt: skip
    batches = plan.epoch_batches(0)
    assert len(batches) == rows // 4 and sum(len(b.rows) for b in batches) == rows
    assert _tensor_bytes(plan) < 2**20  # against 4 MiB per row for the masks alone

    tensors = batches[0].build()
    assert tensors["attention_mask"].shape == (4, 1, length, length)
    assert tensors["input_ids"].shape == (4, length)
    assert batches[0].real_tokens == batches[0].slot_tokens == 4 * length
    assert _tensor_bytes(plan) < 2**20  # nothing was kept
