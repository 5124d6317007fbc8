"""GSM8K (JSON lines: `question`, `answer` ending in `#### N`), and its calculator notes.

GSM8K's worked solutions carry calculator annotations such as `<<48/2=24>>`. They give both the
reasoning steps and, read in order, a small program; the teacher simulator and the sandbox
benchmark derive realistic Program-of-Thought rationales from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from services.corpora.base import BadRecord, CorpusLoader, SourceProblem
from services.corpora.jsonlines import iter_json_lines

_NOTE_RE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_SAFE_EXPR_RE = re.compile(r"[\d\s+\-*/().%]+")


class GSM8KLoader(CorpusLoader):
    format = "gsm8k"
    description = "GSM8K JSON lines: question, answer (worked solution, last line '#### N')"
    ids_are_positions = True

    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        for index, item in enumerate(iter_json_lines(self.path)):
            if isinstance(item, BadRecord):
                yield item
                continue
            line_no, record = item
            location = f"line {line_no}"
            question = record.get("question")
            answer = record.get("answer")
            if not isinstance(question, str) or not question.strip():
                yield BadRecord(location, "question", "missing or empty")
            elif not isinstance(answer, str) or "####" not in answer:
                yield BadRecord(location, "answer", "missing, or has no '#### <final answer>' line")
            else:
                gold = answer.rpartition("####")[2]
                gold = gold.strip()
                if not gold:
                    yield BadRecord(location, "answer", "nothing after '####'")
                else:
                    yield SourceProblem(
                        source_id=str(index),
                        question=question.strip(),
                        gold_answer=gold,
                        location=location,
                        worked_solution=answer.strip(),
                    )


@dataclass(slots=True, frozen=True)
class CalculatorNote:
    expression: str  # e.g. "48/2"
    result: str  # e.g. "24"


def calculator_notes(worked_solution: str) -> list[CalculatorNote]:
    """The `<<expr=result>>` annotations of a GSM8K solution, in order."""
    return [CalculatorNote(e.strip(), r.strip()) for e, r in _NOTE_RE.findall(worked_solution)]


def solution_steps(worked_solution: str) -> list[str]:
    """The human-readable steps of a GSM8K solution: its lines without notes or the final line."""
    body = worked_solution.rpartition("####")[0] if "####" in worked_solution else worked_solution
    steps = [_NOTE_RE.sub("", line).strip() for line in body.splitlines()]
    return [s for s in steps if s]


def program_from_solution(worked_solution: str, gold: str) -> str:
    """A Python program computing the answer from the solution's calculator notes.

    Each note becomes a `step_i = <expression>` line in which earlier results are replaced by the
    variables holding them, so the program reads like one a model would write. The last line is
    `ans = step_k` when the last note's result is the gold answer, else `ans = <gold>` after the
    steps. Expressions that are not plain arithmetic are left out.
    """
    lines: list[str] = []
    known: dict[str, str] = {}
    last_var: str | None = None
    last_result = None
    for note in calculator_notes(worked_solution):
        expr = note.expression.replace("x", "*").replace("÷", "/").replace(",", "")
        if not expr or not _SAFE_EXPR_RE.fullmatch(expr):
            continue
        for result, var in sorted(known.items(), key=lambda kv: -len(kv[0])):
            expr = re.sub(rf"(?<![\w.]){re.escape(result)}(?![\w.])", var, expr)
        var = f"step_{len(lines) + 1}"
        lines.append(f"{var} = {expr}")
        result = note.result.replace(",", "").strip()
        known.setdefault(result, var)
        last_var, last_result = var, result
    gold_text = gold.replace(",", "").strip()
    if last_var is not None and last_result == gold_text:
        lines.append(f"ans = {last_var}")
    else:
        lines.append(f"ans = {gold_text}")
    return "\n".join(lines) + "\n"
