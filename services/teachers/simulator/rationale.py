"""Key-point rationales derived from a problem's gold worked solution, for the simulator to answer.

- Core question: the last sentence of the problem that asks something (ends with `?`).
- Problem-solving information: the problem's other sentences, in order.
- CoT solution: GSM8K's worked steps without the calculator notes; for SVAMP, MultiArith and
  ASDiv the corpus equation written out (`(34 - 27) = 7`); otherwise the worked solution's lines.
  It ends with `The answer is: <gold>`.
- PoT program: GSM8K's calculator notes as a program (`program_from_solution`), checked by exact
  arithmetic (`services.kpdd.arithmetic`, never exec). About 4% of GSM8K train programs come out
  wrong there (a note result replaced inside a variable name); for those the notes' literal
  expressions are used as steps, and if the last step still is not the gold, `ans = <gold>` ends
  the program. For the other corpora `ans = <equation>` when it evaluates to the gold, else
  `ans = <gold>`.

A problem without a usable gold answer has no rationale (`derive_rationale` returns None): the
simulator refuses it rather than invent an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from services.corpora.gsm8k import calculator_notes, program_from_solution, solution_steps
from services.kpdd.arithmetic import evaluate_expression, evaluate_program
from services.validation.numbers import normalise_gold, parse_number

# The "wrong" answer of a text gold (a number gold's is gold + 1).
WRONG_TEXT_ANSWER = "0"

_SENTENCE_RE = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'$(\d])")
_UNITS_RE = re.compile(r"\s*\([^()]*\)")


@dataclass(slots=True)
class GoldProblem:
    """A problem the simulator knows, as a corpus or the database gives it."""

    question: str
    gold_answer: str | None
    worked_solution: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class SimRationale:
    """Everything the simulator needs to answer any KPDD prompt about one problem."""

    core_question: str
    solving_info: list[str]
    cot_steps: str
    answer: str  # final answer text, e.g. "72", "2.5", "3:30 p.m."
    program: str
    wrong_answer: str
    wrong_program: str


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(" ".join(text.split())) if s.strip()]


def core_and_info(question: str) -> tuple[str, list[str]]:
    sentences = split_sentences(question) or [question.strip()]
    asking = [i for i, s in enumerate(sentences) if s.endswith("?")]
    core_index = asking[-1] if asking else len(sentences) - 1
    core = sentences[core_index]
    info = [s for i, s in enumerate(sentences) if i != core_index]
    return core, info or [question.strip()]


def _number_text(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a terminating decimal: write it exactly
        text = f"{float(value):.12f}".rstrip("0").rstrip(".")
        if parse_number(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


def answer_value(gold: str | None) -> Fraction | str | None:
    """The gold as an exact number, or as text (names, ratios, several values), or None."""
    norm = normalise_gold(gold)
    if norm.kind == "number" and norm.value is not None:
        return Fraction(norm.value)
    if norm.kind == "text" and gold is not None:
        return _UNITS_RE.sub("", gold).strip() or gold.strip()
    return None


def _literal(value: Fraction | str) -> str:
    return _number_text(value) if isinstance(value, Fraction) else repr(value)


def _wrong(value: Fraction | str) -> Fraction | str:
    return value + 1 if isinstance(value, Fraction) else WRONG_TEXT_ANSWER


def _wrong_program(program: str, value: Fraction | str) -> str:
    lines = program.rstrip("\n").splitlines()
    last = lines[-1] if lines else "ans = 0"
    expr = last.partition("=")[2].strip()
    if isinstance(value, Fraction):
        literal = parse_number(expr)
        new = _number_text(literal + 1) if literal is not None else f"{expr} + 1"
    else:
        new = repr(WRONG_TEXT_ANSWER)
    return "\n".join([*lines[:-1], f"ans = {new}"]) + "\n"


def _gsm8k_program(worked: str, gold: str, value: Fraction) -> str:
    program = program_from_solution(worked, gold)
    if evaluate_program(program) == value:
        return program
    lines: list[str] = []
    for note in calculator_notes(worked):
        expr = note.expression.replace("x", "*").replace("÷", "/").replace(",", "")
        if evaluate_expression(expr) is not None:
            lines.append(f"step_{len(lines) + 1} = {expr}")
    if lines and evaluate_expression(lines[-1].partition(" = ")[2]) == value:
        lines.append(f"ans = step_{len(lines)}")
    else:
        lines.append(f"ans = {_number_text(value)}")
    return "\n".join(lines) + "\n"


def _corpus_equation(extra: dict[str, Any] | None) -> str | None:
    """SVAMP's `Equation`, MultiArith's first `lEquations` (`X=(5+3)`), ASDiv's `Formula` left side."""
    if not extra:
        return None
    equation = extra.get("equation")
    if isinstance(equation, str) and equation.strip():
        return equation.strip()
    equations = extra.get("equations")
    if isinstance(equations, list) and equations and isinstance(equations[0], str):
        left, _, right = equations[0].partition("=")
        return (right if re.fullmatch(r"\s*[A-Za-z]\w*\s*", left) else left).strip() or None
    formula = extra.get("formula")
    if isinstance(formula, str) and "=" in formula:
        return formula.partition("=")[0].strip() or None
    return None


def _tidy(expression: str) -> str:
    """`( 34.0 - 27.0 )` -> `(34 - 27)`: how a teacher would write it."""
    text = re.sub(r"(\d+)\.0\b", r"\1", expression)
    text = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", text))
    text = re.sub(r"\s*([-+*/])\s*", r" \1 ", text)
    return " ".join(text.split())


def derive_rationale(problem: GoldProblem) -> SimRationale | None:
    """The simulator's rationale for a problem with a gold answer; None without a usable one."""
    value = answer_value(problem.gold_answer)
    if value is None:
        return None
    core, info = core_and_info(problem.question)
    answer = _number_text(value) if isinstance(value, Fraction) else value
    worked = problem.worked_solution
    steps: list[str] = []
    program = f"ans = {_literal(value)}\n"
    if worked and calculator_notes(worked) and isinstance(value, Fraction) and problem.gold_answer:
        steps = solution_steps(worked)
        program = _gsm8k_program(worked, problem.gold_answer, value)
    elif (equation := _corpus_equation(problem.extra)) is not None and isinstance(value, Fraction):
        tidy = _tidy(equation)
        if evaluate_expression(tidy) == value:
            steps = [f"We compute {tidy} = {answer}."]
            program = f"ans = {tidy}\n"
    elif worked:
        body = worked.rpartition("####")[0] if "####" in worked else worked
        steps = [line.strip() for line in body.splitlines() if line.strip()]
    if not steps:
        stop = "" if answer.endswith(".") else "."
        steps = [f"Using the information above, the result is {answer}{stop}"]
    wrong = _wrong(value)
    return SimRationale(
        core_question=core,
        solving_info=info,
        cot_steps="\n".join(steps),
        answer=answer,
        program=program,
        wrong_answer=_number_text(wrong) if isinstance(wrong, Fraction) else wrong,
        wrong_program=_wrong_program(program, value),
    )
