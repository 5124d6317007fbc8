"""Batched greedy generation: left padding for decoder-only students, batched == unbatched,
prompt stripped, outputs in input order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.kpdd.formatting import format_student_input
from training.data.encoding import encode
from training.data.snapshot import TaskExample
from training.data.tokenizer import PAD_ID, SEP_ID
from training.evaluate.generation import StudentGenerator
from training.evaluate.items import EvalItem
from training.evaluate.student import load_student, read_student_info


def _inputs(items: list[EvalItem]) -> list[str]:
    # Different lengths, so a batch needs padding.
    return [format_student_input("end-to-end", "cot", item.question) for item in items]


def _generator(student: Path, batch_size: int, max_new_tokens: int = 12) -> StudentGenerator:
    info = read_student_info(student)
    model, tokenizer = load_student(student, info, "cpu")
    return StudentGenerator(
        model, tokenizer, arch=info.arch, batch_size=batch_size, max_new_tokens=max_new_tokens
    )


class _Spy:
    """Wraps `model.generate` to keep the tensors each batch was given."""

    def __init__(self, model: Any) -> None:
        self.original = model.generate
        self.calls: list[dict[str, Any]] = []
        model.generate = self

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.original(**kwargs)


def test_causal_batches_are_left_padded(causal_student: Path, items6: list[EvalItem]) -> None:
    generator = _generator(causal_student, batch_size=6)
    spy = _Spy(generator.model)
    generator(_inputs(items6))
    assert len(spy.calls) == 1
    call = spy.calls[0]
    input_ids, mask = call["input_ids"], call["attention_mask"]
    assert input_ids.shape[0] == 6
    # Every prompt ends at the last column with <sep>, where generation starts.
    assert input_ids[:, -1].tolist() == [SEP_ID] * 6
    assert mask[:, -1].tolist() == [1] * 6
    lengths = mask.sum(dim=1).tolist()
    assert len(set(lengths)) > 1, "the items should need padding"
    for row, length in enumerate(lengths):
        pad = input_ids.shape[1] - length
        assert input_ids[row, :pad].tolist() == [PAD_ID] * pad
        assert mask[row, :pad].tolist() == [0] * pad
    assert call["do_sample"] is False and call["num_beams"] == 1


@pytest.mark.parametrize("student", ["causal_student", "seq2seq_student"])
def test_batched_greedy_equals_unbatched(
    student: str, request: pytest.FixtureRequest, items6: list[EvalItem]
) -> None:
    directory = request.getfixturevalue(student)
    inputs = _inputs(items6)
    batched = _generator(directory, batch_size=4)(inputs)  # sorted by length, then 4 + 2
    single = _generator(directory, batch_size=1)(inputs)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.input_tokens for g in batched] == [g.input_tokens for g in single]
    # The check means something only if the output depends on the input.
    assert len({g.text for g in single}) > 1


def test_outputs_hold_new_tokens_only(causal_student: Path, items6: list[EvalItem]) -> None:
    generator = _generator(causal_student, batch_size=3, max_new_tokens=8)
    inputs = _inputs(items6)
    outputs = generator(inputs)
    assert len(outputs) == len(inputs)
    for text_input, output in zip(inputs, outputs, strict=True):
        assert output.new_tokens is not None and output.new_tokens <= 8
        assert output.input_tokens is not None and output.input_tokens > 8
        assert "Problem:" not in output.text and text_input[:40] not in output.text
        if not output.stopped:
            assert output.new_tokens == 8  # cut at the limit, no </s> among them
    assert generator.cut_at_limit == sum(1 for o in outputs if not o.stopped)


def test_empty_input_list_generates_nothing(seq2seq_student: Path) -> None:
    generator = _generator(seq2seq_student, batch_size=2)
    assert generator([]) == []
    assert generator.calls == 0


@pytest.mark.parametrize("student", ["causal_student", "seq2seq_student"])
def test_prompts_are_training_sources_cut_like_training(
    student: str, request: pytest.FixtureRequest, items6: list[EvalItem]
) -> None:
    directory = request.getfixturevalue(student)
    info = read_student_info(directory)
    model, tokenizer = load_student(directory, info, "cpu")
    generator = StudentGenerator(
        model, tokenizer, arch=info.arch, batch_size=1, max_new_tokens=2, max_source_tokens=40
    )
    spy = _Spy(model)
    inputs = _inputs(items6[:3])
    outputs = generator(inputs)
    examples = [TaskExample("end-to-end", "cot", text, "x") for text in inputs]
    trained, stats = encode(examples, tokenizer, arch=info.arch, max_source_tokens=40, max_target_tokens=8)
    assert stats["truncated_sources"] == 3  # every GSM8K problem is longer than 40 tokens
    sent = {tuple(call["input_ids"][0].tolist()) for call in spy.calls}
    assert sent == {tuple(e.source_ids) for e in trained}
    assert all(o.input_tokens is not None and o.input_tokens > 40 for o in outputs)
