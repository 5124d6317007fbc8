"""Judging and chaining on fabricated generations, injected through the `generate` seam.

Each test scripts what the "student" writes for each input and checks the verdict kinds, the
inputs each stage received (exact text), and that the results add up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.validation.sandbox import Sandbox
from training.evaluate.items import EvalItem
from training.evaluate.judging import FAILURE_KINDS
from training.evaluate.run import evaluate_items

Q1 = "Tom has 3 apples and buys 4 more. How many apples does he have?"
Q2 = "A box holds 6 eggs. How many eggs are in 2 boxes?"
Q3 = "Ann reads 5 pages a day. How many pages does she read in 3 days?"
Q4 = "Bob had 10 dollars and spent 4. How much is left?"


class ScriptedStudent:
    """A `GenerateFn` answering from a function of the input text; keeps every call's inputs."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def __call__(self, inputs: Sequence[str]) -> list[str]:
        self.calls.append(list(inputs))
        return [self.answer(text) for text in inputs]


def by_question(outputs: dict[str, str]) -> Callable[[str], str]:
    def answer(text: str) -> str:
        return next(out for question, out in outputs.items() if question in text)

    return answer


def end_to_end(solution: str) -> str:
    return f"Core question: How many?\n\nProblem-solving information:\n- some facts\n\nSolution:\n{solution}"


def pot(program: str) -> str:
    return end_to_end(f"```python\n{program}\n```")


def items(*questions_golds: tuple[str, str], dataset: str = "toy") -> list[EvalItem]:
    return [EvalItem(dataset, str(i), q, g) for i, (q, g) in enumerate(questions_golds)]


def test_pot_programs_are_run_in_the_sandbox_and_classified(sandbox: Sandbox) -> None:
    student = ScriptedStudent(
        by_question(
            {
                Q1: pot("apples = 3\nbought = 4\nans = apples + bought"),
                Q2: pot("ans = 6 * 2 / 0"),
                Q3: pot("while True:\n    pass\nans = 15"),
                Q4: end_to_end("The program is left as an exercise."),
            }
        )
    )
    result = evaluate_items(
        items((Q1, "7"), (Q2, "12"), (Q3, "15"), (Q4, "6")),
        layout="end-to-end",
        mode="pot",
        generate=student,
        sandbox=sandbox,
        program_timeout_s=1.0,
    )
    kinds = [p.judgement.kind for p in result.predictions]
    assert kinds == ["correct", "program_error", "timeout", "no_answer"]
    correct, error, timeout, unparsed = result.predictions
    assert correct.judgement.execution is not None and correct.judgement.execution.answer is not None
    assert correct.judgement.execution.answer.value == "7"
    assert error.judgement.execution is not None
    assert error.judgement.execution.error_type == "ZeroDivisionError"
    assert timeout.judgement.execution is not None and timeout.judgement.execution.kind.value == "timeout"
    assert unparsed.judgement.execution is None  # nothing to run
    assert unparsed.judgement.failed_stage == "end-to-end"
    assert "did not parse" in (unparsed.judgement.reason or "")
    overall = result.results["overall"]
    assert overall["correct"] == 1 and overall["accuracy"] == 0.25
    assert overall["failures"] == {"wrong": 0, "no_answer": 1, "program_error": 1, "timeout": 1}
    assert len(student.calls) == 1  # one generation call for the whole batch


def test_cot_answers_are_judged_against_the_gold() -> None:
    student = ScriptedStudent(
        by_question(
            {
                Q1: end_to_end("3 + 4 = 7\nThe answer is: 7"),
                Q2: end_to_end("6 + 2 = 8\nThe answer is: 8"),
                Q3: end_to_end("She reads a lot of pages."),  # no answer line
                Q4: "I do not know.",
            }
        )
    )
    result = evaluate_items(
        items((Q1, "7"), (Q2, "12"), (Q3, "15"), (Q4, "6")),
        layout="end-to-end",
        mode="cot",
        generate=student,
    )
    kinds = [p.judgement.kind for p in result.predictions]
    assert kinds == ["correct", "wrong", "no_answer", "no_answer"]
    wrong = result.predictions[1].to_json()
    assert wrong["answer"] == "8" and wrong["verdict"]["kind"] == "mismatch"
    assert wrong["verdict"]["details"]["gold"] == "12"
    assert result.predictions[2].judgement.failed_stage == "end-to-end"
    assert "no final answer line" in (result.predictions[2].judgement.reason or "")


def test_two_stage_feeds_the_key_points_into_the_solution_input() -> None:
    def answer(text: str) -> str:
        if text.startswith("[key-points | KPDD-CoT]"):
            return "Core question: How many apples now?\n\nProblem-solving information:\n- 3 apples\n- buys 4"
        return "Solution:\n3 + 4 = 7\nThe answer is: 7"

    student = ScriptedStudent(answer)
    result = evaluate_items(items((Q1, "7")), layout="two-stage", mode="cot", generate=student)
    assert student.calls == [
        [f"[key-points | KPDD-CoT]\nProblem:\n{Q1}"],
        [
            f"[solution | KPDD-CoT]\nProblem:\n{Q1}\n\nCore question: How many apples now?\n\n"
            "Problem-solving information:\n- 3 apples\n- buys 4"
        ],
    ]
    prediction = result.predictions[0]
    assert prediction.judgement.kind == "correct"
    assert [s.task for s in prediction.outcome.stages] == ["key-points", "solution"]
    assert prediction.outcome.solving_info == ["3 apples", "buys 4"]


def test_cascade_chains_stage_outputs_and_stops_a_broken_item(sandbox: Sandbox) -> None:
    def answer(text: str) -> str:
        if text.startswith("[core-question"):
            if Q2 in text:
                return "Well.\n\nThat depends.\n\nOn many things."  # not one core question
            return "Core question: How many apples does Tom have now?"
        if text.startswith("[solving-info"):
            return "Problem-solving information:\n- Tom has 3 apples.\n- He buys 4 more."
        return "Solution:\n```python\nans = 3 + 4\n```"

    student = ScriptedStudent(answer)
    result = evaluate_items(
        items((Q1, "7"), (Q2, "12")), layout="cascade", mode="pot", generate=student, sandbox=sandbox
    )
    core = "Core question: How many apples does Tom have now?"
    info = "Problem-solving information:\n- Tom has 3 apples.\n- He buys 4 more."
    assert student.calls == [
        [f"[core-question | KPDD-PoT]\nProblem:\n{Q1}", f"[core-question | KPDD-PoT]\nProblem:\n{Q2}"],
        [f"[solving-info | KPDD-PoT]\nProblem:\n{Q1}\n\n{core}"],  # Q2 left the chain
        [f"[solution | KPDD-PoT]\nProblem:\n{Q1}\n\n{core}\n\n{info}"],
    ]
    first, broken = result.predictions
    assert first.judgement.kind == "correct"
    assert [s.task for s in first.outcome.stages] == ["core-question", "solving-info", "solution"]
    assert broken.judgement.kind == "no_answer"
    assert broken.judgement.failed_stage == "core-question"
    line = broken.to_json()
    assert len(line["stages"]) == 1 and line["stages"][0]["error"].startswith("malformed:")
    assert line["verdict"] is None and line["execution"] is None


def test_results_add_up_per_dataset() -> None:
    student = ScriptedStudent(
        by_question(
            {
                Q1: end_to_end("The answer is: 7"),
                Q2: end_to_end("The answer is: 11"),
                Q3: "nothing",
                Q4: end_to_end("The answer is: 6"),
            }
        )
    )
    batch = items((Q1, "7"), (Q2, "12"), dataset="a") + items((Q3, "15"), (Q4, "6"), dataset="b")
    result = evaluate_items(batch, layout="end-to-end", mode="cot", generate=student)
    datasets = result.results["datasets"]
    assert list(datasets) == ["a", "b"]
    assert datasets["a"]["correct"] == 1 and datasets["a"]["failures"]["wrong"] == 1
    assert datasets["b"]["correct"] == 1 and datasets["b"]["failures"]["no_answer"] == 1
    for block in [*datasets.values(), result.results["overall"]]:
        assert block["correct"] + sum(block["failures"][k] for k in FAILURE_KINDS) == block["n"]
        assert block["accuracy"] == block["correct"] / block["n"]
    assert result.results["overall"]["n"] == 4 and result.accuracy == 0.5
