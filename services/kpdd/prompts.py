"""The versioned KPDD prompts, rendered to a provider-neutral message list.

There is one `PromptTemplate` per (mode, stage mode, stage): modes `cot` and `pot`; stage mode
`single` (one call returns the three key-point sections, stage `all`) or `staged` (three chained
calls: `core_question`, then `solving_info` given the core question, then `solution` given both).

A template's version is `<name>-<revision>+<8 hex>`, e.g. `kpdd-cot-single-v1+3f2a9c1d`: the hex
is the sha256 of everything that shapes the text sent (the system prompt, the rendered few-shot
turns, the layout of the user message), so editing a template or a demo changes the version
even if nobody bumps the revision. The version is stored with every call and rationale the
prompt produced. A staged chain as a whole has `prompt_set_version(mode, "staged")`.

The user message always starts with a line `Problem:` followed by the question (see
`formatting.format_problem`); the staged stages 2 and 3 append the earlier stages' outputs in
the answer format. `read_problem` is the inverse, used by the teacher simulator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from services.kpdd.demos import DEMOS, Demo
from services.kpdd.formatting import (
    CORE_HEADING,
    INFO_HEADING,
    PROBLEM_MARKER,
    SOLUTION_HEADING,
    format_core_question,
    format_key_points,
    format_problem,
    format_solution,
    format_solving_info,
    solution_of,
)
from services.kpdd.records import MODES, STAGE_MODES, Mode, Stage, StageMode, stages_of

Message = dict[str, str]

_ROLE = "You are an expert math teacher who explains grade-school math word problems clearly."

_CORE_FORMAT = f"{CORE_HEADING} <the one question the problem really asks, restated in one sentence>"
_INFO_FORMAT = (
    f"{INFO_HEADING}\n"
    "- <a fact or quantity from the problem that is needed to answer the core question>\n"
    "- <one fact per line; include implicit facts too, such as 60 minutes in an hour>"
)
_COT_FORMAT = (
    f"{SOLUTION_HEADING}\n"
    "<the solution, one short step per line, each with its arithmetic written out>\n"
    "The answer is: <the final answer as a number, without units>"
)
_POT_FORMAT = (
    f"{SOLUTION_HEADING}\n"
    "```python\n"
    "<a Python program that computes the answer step by step with descriptive variable names\n"
    " and stores the final answer in a variable named ans>\n"
    "```"
)
_POT_RULES = (
    "The program must not print, read input or import anything; it is run and the value of "
    "`ans` is taken as the answer."
)


def _system_text(mode: Mode, stage: Stage) -> str:
    solution_format = _POT_FORMAT if mode == "pot" else _COT_FORMAT
    pot_rules = f"\n\n{_POT_RULES}" if mode == "pot" else ""
    if stage == "all":
        return (
            f"{_ROLE}\n\n"
            "Solve the problem by first writing down its key points. Answer in three sections, "
            "in exactly this format:\n\n"
            f"{_CORE_FORMAT}\n\n{_INFO_FORMAT}\n\n{solution_format}\n\n"
            "Write nothing before the core question and nothing after the solution."
            f"{pot_rules}"
        )
    if stage == "core_question":
        return (
            f"{_ROLE}\n\n"
            "Read the problem and state its core question: the one question the problem really "
            "asks. Do not solve the problem. Answer in exactly this format:\n\n"
            f"{_CORE_FORMAT}"
        )
    if stage == "solving_info":
        return (
            f"{_ROLE}\n\n"
            "You are given a problem and its core question. List the problem-solving information: "
            "the facts and quantities needed to answer the core question. Do not solve the "
            "problem. Answer in exactly this format:\n\n"
            f"{_INFO_FORMAT}"
        )
    return (
        f"{_ROLE}\n\n"
        "You are given a problem, its core question and the problem-solving information. Solve "
        "the problem step by step using that information. Answer in exactly this format:\n\n"
        f"{solution_format}"
        f"{pot_rules}"
    )


@dataclass(slots=True, frozen=True)
class PromptTemplate:
    """Everything that determines the messages of one prompt. `version` is derived from it."""

    name: str  # e.g. "kpdd-cot-single"; a stage suffix for staged prompts
    revision: str  # bumped by hand for a deliberate change; the hash catches the rest
    mode: Mode
    stage_mode: StageMode
    stage: Stage
    system: str
    demos: tuple[Demo, ...] = field(default=DEMOS, repr=False)

    @property
    def version(self) -> str:
        probe = self.user_message("{question}", "{core_question}", ["{solving_info}"])
        payload = orjson.dumps([self.system, self.demo_messages(), probe])
        return f"{self.name}-{self.revision}+{hashlib.sha256(payload).hexdigest()[:8]}"

    def user_message(
        self, question: str, core_question: str | None, solving_info: Sequence[str] | None
    ) -> str:
        if self.stage in ("all", "core_question"):
            return format_problem(question)
        if self.stage == "solving_info":
            return format_problem(question, core_question)
        return format_problem(question, core_question, solving_info)

    def demo_answer(self, demo: Demo) -> str:
        key_points = demo.key_points(self.mode)
        if self.stage == "all":
            return format_key_points(key_points)
        if self.stage == "core_question":
            return format_core_question(key_points.core_question)
        if self.stage == "solving_info":
            return format_solving_info(key_points.solving_info)
        return format_solution(solution_of(key_points))

    def demo_messages(self) -> list[Message]:
        """The few-shot turns: for each demo, the user message and the answer for this stage."""
        messages: list[Message] = []
        for demo in self.demos:
            user = self.user_message(demo.question, demo.core_question, demo.solving_info)
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": self.demo_answer(demo)})
        return messages


@dataclass(slots=True)
class RenderedPrompt:
    """A prompt ready to send: a system text and alternating user/assistant turns ending in the
    user message with the problem. Provider-neutral: OpenAI takes the system text as the first
    message (`openai_messages`), Anthropic as its top-level `system` parameter."""

    system: str
    messages: list[Message]
    version: str
    stage: Stage
    mode: Mode
    stage_mode: StageMode

    def openai_messages(self) -> list[Message]:
        return [{"role": "system", "content": self.system}, *self.messages]


def _build_templates() -> dict[tuple[Mode, StageMode, Stage], PromptTemplate]:
    templates: dict[tuple[Mode, StageMode, Stage], PromptTemplate] = {}
    for mode in MODES:
        for stage_mode in STAGE_MODES:
            for stage in stages_of(stage_mode):
                name = f"kpdd-{mode}-{stage_mode}" + ("" if stage == "all" else f"-{stage}")
                templates[(mode, stage_mode, stage)] = PromptTemplate(
                    name=name,
                    revision="v1",
                    mode=mode,
                    stage_mode=stage_mode,
                    stage=stage,
                    system=_system_text(mode, stage),
                )
    return templates


TEMPLATES: dict[tuple[Mode, StageMode, Stage], PromptTemplate] = _build_templates()
_VERSIONS: dict[tuple[Mode, StageMode, Stage], str] = {k: t.version for k, t in TEMPLATES.items()}


def get_template(mode: Mode, stage_mode: StageMode = "single", stage: Stage | None = None) -> PromptTemplate:
    """The built-in template; `stage` defaults to `all` (single) and is required for staged."""
    if stage is None:
        if stage_mode == "staged":
            raise ValueError("a staged prompt needs a stage: core_question, solving_info or solution")
        stage = "all"
    try:
        return TEMPLATES[(mode, stage_mode, stage)]
    except KeyError:
        raise ValueError(
            f"no KPDD prompt for mode={mode!r}, stage_mode={stage_mode!r}, stage={stage!r}"
        ) from None


def prompt_version(mode: Mode, stage_mode: StageMode = "single", stage: Stage | None = None) -> str:
    """The version string of one built-in prompt."""
    template = get_template(mode, stage_mode, stage)
    return _VERSIONS[(template.mode, template.stage_mode, template.stage)]


def prompt_set_version(mode: Mode, stage_mode: StageMode) -> str:
    """One version for the whole chain a stage mode runs: the single prompt's own version, or for
    `staged` a hash over the three stage versions (`kpdd-cot-staged-v1+<8 hex>`). This is the
    version that identifies a rationale."""
    if stage_mode == "single":
        return prompt_version(mode, "single")
    stage_versions = [prompt_version(mode, "staged", stage) for stage in stages_of("staged")]
    digest = hashlib.sha256("\n".join(stage_versions).encode()).hexdigest()[:8]
    return f"kpdd-{mode}-staged-v1+{digest}"


def render_prompt(
    question: str,
    mode: Mode,
    stage_mode: StageMode = "single",
    stage: Stage | None = None,
    *,
    core_question: str | None = None,
    solving_info: Sequence[str] | None = None,
    template: PromptTemplate | None = None,
) -> RenderedPrompt:
    """Render the prompt for one problem and stage.

    Staged stage `solving_info` needs `core_question`; stage `solution` needs both earlier
    outputs. Passing a `template` overrides the built-in one (experiments, tests); its own
    version is used. Raises ValueError for an impossible combination (a caller bug).
    """
    tpl = template or get_template(mode, stage_mode, stage)
    if tpl.stage in ("solving_info", "solution") and core_question is None:
        raise ValueError(f"stage {tpl.stage!r} needs the core question from stage 'core_question'")
    if tpl.stage == "solution" and solving_info is None:
        raise ValueError("stage 'solution' needs the solving information from stage 'solving_info'")
    if not question.strip():
        raise ValueError("the question is empty")
    messages = tpl.demo_messages()
    messages.append({"role": "user", "content": tpl.user_message(question, core_question, solving_info)})
    version = _VERSIONS.get((tpl.mode, tpl.stage_mode, tpl.stage)) if template is None else None
    return RenderedPrompt(
        system=tpl.system,
        messages=messages,
        version=version or tpl.version,
        stage=tpl.stage,
        mode=tpl.mode,
        stage_mode=tpl.stage_mode,
    )


# --- reading a rendered prompt back (the teacher simulator's side) -------------------------------

_SYSTEM_INDEX: dict[str, PromptTemplate] = {}
for _tpl in TEMPLATES.values():
    # Stages 1 and 2 of the staged chain read the same for CoT and PoT; either template will do.
    _SYSTEM_INDEX.setdefault(_tpl.system, _tpl)

_PROBLEM_LINE_RE = re.compile(rf"^{re.escape(PROBLEM_MARKER)}[ \t]*$", re.MULTILINE)
_SECTION_AFTER_PROBLEM_RE = re.compile(rf"\n\s*\n(?={re.escape(CORE_HEADING)}|{re.escape(INFO_HEADING)})")


@dataclass(slots=True)
class PromptReading:
    """What a teacher can tell from a KPDD prompt: the question, the stage and the mode.
    `template` is None when the system text is not one of the built-in prompts (then mode and
    stage are guessed from the wording)."""

    question: str
    mode: Mode
    stage_mode: StageMode
    stage: Stage
    template: PromptTemplate | None


def _after_marker(user_text: str) -> str | None:
    m = _PROBLEM_LINE_RE.search(user_text)
    return None if m is None else user_text[m.end() :]


def read_problem(user_text: str) -> str | None:
    """The question in a KPDD user message: the text after the first line that is exactly
    `Problem:`, up to the earlier stages' sections if any. None when there is no such line."""
    tail = _after_marker(user_text)
    if tail is None:
        return None
    question = _SECTION_AFTER_PROBLEM_RE.split(tail, maxsplit=1)[0].strip()
    return question or None


def read_prompt(system: str, last_user_text: str) -> PromptReading | None:
    """Identify a KPDD prompt from its system text and last user message. None if the user
    message has no `Problem:` marker."""
    question = read_problem(last_user_text)
    if question is None:
        return None
    template = _SYSTEM_INDEX.get(system)
    if template is not None:
        return PromptReading(question, template.mode, template.stage_mode, template.stage, template)
    mode: Mode = "pot" if "python" in system.lower() else "cot"
    tail = _after_marker(last_user_text) or ""
    stage: Stage
    if INFO_HEADING in tail:
        stage = "solution"
    elif CORE_HEADING in tail:
        stage = "solving_info"
    elif "three sections" in system or (SOLUTION_HEADING in system and INFO_HEADING in system):
        stage = "all"
    else:
        stage = "core_question"
    return PromptReading(question, mode, "single" if stage == "all" else "staged", stage, None)


def all_versions() -> dict[str, str]:
    """Every built-in prompt version, for docs and `--json` listings."""
    out: dict[str, str] = {}
    for (mode, stage_mode, stage), version in _VERSIONS.items():
        out[f"{mode}/{stage_mode}/{stage}"] = version
    for mode in MODES:
        out[f"{mode}/staged"] = prompt_set_version(mode, "staged")
    return out
