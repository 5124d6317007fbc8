"""Encoding: the prompt contract shared with evaluation, EOS-terminated targets, counted truncation."""

from __future__ import annotations

import pytest

from tests.training.data.conftest import kpdd_examples
from training.data import (
    TaskExample,
    causal_prompt_ids,
    encode,
    format_causal_prompt,
    make_micro_batches,
    source_ids,
)


def test_causal_rows_are_prompt_then_target_and_eos(causal_tokenizer):
    examples = kpdd_examples()
    encoded, stats = encode(
        examples, causal_tokenizer, arch="causal", max_source_tokens=512, max_target_tokens=512
    )
    assert stats["examples"] == len(examples)
    assert stats["truncated_sources"] == stats["truncated_targets"] == 0
    for example, item in zip(examples, encoded, strict=True):
        # Training prompts are exactly what evaluation prompts with, however it builds them.
        assert item.source_ids == causal_prompt_ids(causal_tokenizer, example.input)
        assert item.source_ids == causal_tokenizer(example.input)["input_ids"]
        assert (
            item.source_ids
            == causal_tokenizer(format_causal_prompt(example.input), add_special_tokens=False)["input_ids"]
        )
        assert item.source_ids[0] == causal_tokenizer.bos_token_id
        assert item.source_ids[-1] == causal_tokenizer.sep_token_id
        assert item.target_ids[-1] == causal_tokenizer.eos_token_id
        assert causal_tokenizer.decode(item.target_ids, skip_special_tokens=True) == example.target


def test_seq2seq_source_ends_with_eos(seq2seq_tokenizer):
    example = kpdd_examples()[1]
    [item], _ = encode(
        [example], seq2seq_tokenizer, arch="seq2seq", max_source_tokens=512, max_target_tokens=512
    )
    assert item.source_ids == source_ids(seq2seq_tokenizer, example.input, arch="seq2seq")
    assert item.source_ids == seq2seq_tokenizer(example.input)["input_ids"]
    assert item.source_ids[-1] == item.target_ids[-1] == seq2seq_tokenizer.eos_token_id


def test_labels_cover_only_target_and_eos(causal_tokenizer):
    encoded, _ = encode(
        kpdd_examples(), causal_tokenizer, arch="causal", max_source_tokens=512, max_target_tokens=512
    )
    for packing in (False, True):
        batches = make_micro_batches(
            encoded,
            arch="causal",
            micro_batch_size=2,
            pad_id=0,
            packing=packing,
            max_seq_len=1024,
            seed=0,
            epoch=0,
        )
        labelled = []
        for batch in batches:
            ids, labels = batch.tensors["input_ids"], batch.tensors["labels"]
            keep = labels != -100
            assert int(keep.sum()) == batch.target_tokens
            assert (labels[keep] == ids[keep]).all()  # aligned; the loop shifts
            for row_ids, row_keep in zip(ids.tolist(), keep.tolist(), strict=True):
                labelled.append([t for t, k in zip(row_ids, row_keep, strict=True) if k])
        # Every labelled position is a target token or its EOS, and all of them are there.
        wanted = sorted(t for e in encoded for t in e.target_ids)
        assert sorted(t for row in labelled for t in row) == wanted
        assert sum(row.count(causal_tokenizer.eos_token_id) for row in labelled) == len(encoded)


def test_truncation_is_counted_and_keeps_the_contract(causal_tokenizer):
    long = TaskExample("end-to-end", "cot", "[end-to-end | KPDD-CoT]\n" + "word " * 200, "step " * 200)
    short = TaskExample("end-to-end", "cot", "[end-to-end | KPDD-CoT]\nQ", "The answer is: 1")
    encoded, stats = encode(
        [long, short], causal_tokenizer, arch="causal", max_source_tokens=20, max_target_tokens=30
    )
    assert (stats["truncated_sources"], stats["truncated_targets"]) == (1, 1)
    assert stats["longest_target"] > 30
    item = encoded[0]
    assert len(item.source_ids) == 20 and item.source_ids[-1] == causal_tokenizer.sep_token_id
    assert len(item.target_ids) == 30
    assert causal_tokenizer.eos_token_id not in item.target_ids  # never learn to stop mid-answer
    assert causal_tokenizer.decode(item.source_ids[1:5]).startswith("[end")  # the header is kept


def test_limits_too_small_for_special_tokens_are_refused(causal_tokenizer):
    with pytest.raises(ValueError, match="max_source_tokens"):
        encode(kpdd_examples(), causal_tokenizer, arch="causal", max_source_tokens=2, max_target_tokens=8)
