"""KPDD prompts: rendering, versions, demos, and reading a prompt back."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.kpdd.arithmetic import evaluate_program
from services.kpdd.demos import DEMOS
from services.kpdd.formatting import PROBLEM_MARKER
from services.kpdd.parsing import parse_response, parse_stage
from services.kpdd.prompts import (
    TEMPLATES,
    all_versions,
    get_template,
    prompt_set_version,
    prompt_version,
    read_problem,
    read_prompt,
    render_prompt,
)
from services.kpdd.records import KeyPoints, Solution, stages_of
from services.validation.numbers import parse_number

DATASETS = Path(
    os.environ.get("KPDD_DATASETS_DIR", Path(__file__).resolve().parents[4] / "shared" / "datasets")
)
GSM8K_TRAIN = DATASETS / "gsm8k" / "train.jsonl"
QUESTION = "A farmer has 12 cows. He buys 5 more and sells 3.  How many cows does he have now?"
VERSION_RE = re.compile(r"^kpdd-(cot|pot)-(single|staged)(-[a-z_]+)?-v\d+\+[0-9a-f]{8}$")


def test_every_template_has_a_well_formed_distinct_version() -> None:
    versions = [t.version for t in TEMPLATES.values()]
    assert len(TEMPLATES) == 8  # 2 modes x (1 single + 3 staged stages)
    assert all(VERSION_RE.match(v) for v in versions), versions
    assert len(set(versions)) == len(versions)
    assert prompt_version("cot").startswith("kpdd-cot-single-v1+")
    assert prompt_version("pot", "staged", "solution").startswith("kpdd-pot-staged-solution-v1+")


def test_version_changes_with_the_template_text_demos_and_revision() -> None:
    template = get_template("cot", "single")
    base = template.version
    assert dataclasses.replace(template, system=template.system + " Be brief.").version != base
    assert dataclasses.replace(template, demos=template.demos[:-1]).version != base
    edited_demo = dataclasses.replace(template.demos[0], core_question="How many clips in total?")
    assert dataclasses.replace(template, demos=(edited_demo, *template.demos[1:])).version != base
    assert dataclasses.replace(template, revision="v2").version != base
    # and it is a pure function of the content: the same content gives the same version
    assert dataclasses.replace(template).version == base


def test_prompt_set_version_covers_the_whole_chain() -> None:
    assert prompt_set_version("cot", "single") == prompt_version("cot", "single")
    staged = prompt_set_version("pot", "staged")
    assert staged.startswith("kpdd-pot-staged-v1+")
    assert staged != prompt_set_version("cot", "staged")
    assert set(all_versions()) >= {"cot/single/all", "pot/staged/solution", "cot/staged"}


@pytest.mark.parametrize("mode", ["cot", "pot"])
def test_single_prompt_shape(mode: str) -> None:
    prompt = render_prompt(QUESTION, mode)  # type: ignore[arg-type]
    assert prompt.stage == "all" and prompt.mode == mode and prompt.stage_mode == "single"
    assert prompt.version == prompt_version(mode)
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["user", "assistant"] * len(DEMOS) + ["user"]
    assert prompt.messages[-1]["content"] == f"{PROBLEM_MARKER}\n{QUESTION}"
    assert "Core question:" in prompt.system and "Problem-solving information:" in prompt.system
    if mode == "pot":
        assert "```python" in prompt.system and "ans" in prompt.system
        assert all("```python" in m["content"] for m in prompt.messages[1::2])
    else:
        assert "The answer is:" in prompt.system
        assert all("The answer is:" in m["content"] for m in prompt.messages[1::2])
    openai_messages = prompt.openai_messages()
    assert openai_messages[0] == {"role": "system", "content": prompt.system}
    assert openai_messages[1:] == prompt.messages
    orjson.dumps(openai_messages)  # plain JSON, ready for any SDK


def test_staged_prompts_carry_earlier_outputs() -> None:
    p1 = render_prompt(QUESTION, "cot", "staged", "core_question")
    assert p1.messages[-1]["content"] == f"Problem:\n{QUESTION}"
    p2 = render_prompt(QUESTION, "cot", "staged", "solving_info", core_question="How many cows now?")
    assert p2.messages[-1]["content"].endswith("\n\nCore question: How many cows now?")
    p3 = render_prompt(
        QUESTION,
        "pot",
        "staged",
        "solution",
        core_question="How many cows now?",
        solving_info=["12 cows", "+5 -3"],
    )
    last = p3.messages[-1]["content"]
    assert last.endswith("Problem-solving information:\n- 12 cows\n- +5 -3")
    assert "```python" in p3.system
    # the few-shot turns of a stage answer that stage only
    assert all(m["content"].startswith("Core question:") for m in p1.messages[1:-1:2])
    assert all(m["content"].startswith("Problem-solving information:") for m in p2.messages[1:-1:2])
    assert all(m["content"].startswith("Solution:") for m in p3.messages[1:-1:2])


def test_staged_stage_needs_its_inputs() -> None:
    with pytest.raises(ValueError, match="core question"):
        render_prompt(QUESTION, "cot", "staged", "solving_info")
    with pytest.raises(ValueError, match="solving information"):
        render_prompt(QUESTION, "cot", "staged", "solution", core_question="q")
    with pytest.raises(ValueError, match="needs a stage"):
        render_prompt(QUESTION, "cot", "staged")
    with pytest.raises(ValueError, match="empty"):
        render_prompt("   ", "cot")


def test_demo_questions_are_verbatim_gsm8k_train() -> None:
    questions = {orjson.loads(line)["question"] for line in GSM8K_TRAIN.read_bytes().splitlines()[:10]}
    for demo in DEMOS:
        assert demo.question in questions, demo.source


@pytest.mark.parametrize("demo", DEMOS, ids=lambda d: d.source)
def test_demo_solutions_reach_the_answer(demo: object) -> None:
    from services.kpdd.demos import Demo

    assert isinstance(demo, Demo)
    assert evaluate_program(demo.program) == parse_number(demo.answer)
    # the last CoT step states the answer
    assert re.search(rf"= \$?{demo.answer}\b", demo.cot_steps.splitlines()[-1])


@pytest.mark.parametrize("mode", ["cot", "pot"])
def test_demo_answers_parse_back(mode: str) -> None:
    """The format the demos show is the format the parser reads, for every stage."""
    for stage_mode in ("single", "staged"):
        for stage in stages_of(stage_mode):
            template = get_template(mode, stage_mode, stage)  # type: ignore[arg-type]
            for demo in template.demos:
                parsed = parse_stage(template.demo_answer(demo), "stop", mode, stage)  # type: ignore[arg-type]
                if stage == "all":
                    assert isinstance(parsed, KeyPoints)
                    assert parsed.core_question == demo.core_question
                    assert parsed.solving_info == list(demo.solving_info)
                elif stage == "core_question":
                    assert parsed == demo.core_question
                elif stage == "solving_info":
                    assert parsed == list(demo.solving_info)
                else:
                    assert isinstance(parsed, Solution)
                    if mode == "pot":
                        assert parsed.program == demo.program + "\n"
                    else:
                        assert parsed.final_answer_text == demo.answer


def test_read_prompt_identifies_every_template() -> None:
    for (mode, stage_mode, stage), template in TEMPLATES.items():
        kwargs: dict[str, Any] = {}
        if stage in ("solving_info", "solution"):
            kwargs["core_question"] = "How many cows now?"
        if stage == "solution":
            kwargs["solving_info"] = ["12 cows"]
        prompt = render_prompt(QUESTION, mode, stage_mode, stage, **kwargs)
        reading = read_prompt(prompt.system, prompt.messages[-1]["content"])
        assert reading is not None
        assert reading.question == QUESTION
        assert (reading.stage_mode, reading.stage) == (stage_mode, stage)
        if stage in ("all", "solution"):  # stages 1-2 read the same in both modes
            assert reading.mode == mode
            assert reading.template is template


def test_read_prompt_guesses_for_unknown_system_text() -> None:
    user = f"Problem:\n{QUESTION}\n\nCore question: How many?\n\nProblem-solving information:\n- 12"
    reading = read_prompt("Write Python code.", user)
    assert reading is not None and reading.template is None
    assert (reading.mode, reading.stage) == ("pot", "solution")
    assert read_prompt("anything", "no marker here") is None


def test_read_problem_edge_cases() -> None:
    assert read_problem("Problem:\n  spaced  question  \n") == "spaced  question"
    assert read_problem("Intro\nProblem:\nQ1\n\nCore question: x") == "Q1"
    assert read_problem("The Problem: is inline") is None
    assert read_problem("Problem:\n") is None
    # a question that itself mentions "Problem:" is read whole
    assert read_problem("Problem:\nSee Problem: 3 above. How many?") == "See Problem: 3 above. How many?"
    assert read_problem("Problem:\nA\nProblem:\nB") == "A\nProblem:\nB"


def test_parse_response_of_a_rendered_demo_gives_the_demo() -> None:
    prompt = render_prompt(QUESTION, "cot")
    parsed = parse_response(prompt.messages[1]["content"], "stop", "cot")
    assert isinstance(parsed, KeyPoints)
    assert parsed.final_answer_text == DEMOS[0].answer
