"""Parse a teacher's answer to a KPDD prompt into `KeyPoints`, or say why it is unusable.

Contract: `parse_response` and `parse_stage` never raise on model output; whatever the text,
they return a record or a `ParseFailure` whose `kind` is one of

- `refused`: the provider said so (finish reason `refusal`), or the text is a refusal
  ("I'm sorry, but I can't ...") with no usable key points;
- `truncated`: the provider stopped at the token limit (finish reason `length`), whatever the
  text looks like, since the last line may be cut (an answer `12` that was going to be `120`);
- `empty`: no text at all;
- `malformed`: a section is missing or empty, a CoT solution has no final-answer line, or a PoT
  solution has no program assigning `ans` (or one that is not valid Python).

The reader is forgiving about layout: headings may be markdown (`**Core question:**`,
`## Solution`), lists may be bulleted or numbered, the answer may be marked `The answer is: N`
(what the prompts ask for), `#### N`, `Final answer: N` or `\\boxed{N}`, and a program may be
fenced or bare. When several code blocks are present, the last one that assigns `ans` wins.
Programs are checked with `ast.parse` only (parsing does not run code); they are executed
elsewhere, in the sandbox.

Finish reasons are normalised first (`normalise_finish_reason`) to `stop`, `length`, `refusal`
or `other`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from services.kpdd.records import (
    FinishReason,
    KeyPoints,
    Mode,
    ParseFailure,
    Solution,
    Stage,
    StageOutput,
)

MAX_CORE_QUESTION_CHARS = 1000

_OPENAI_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "refusal",
}
_ANTHROPIC_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
}


def normalise_finish_reason(provider: str, raw: str | None, *, refusal: bool = False) -> FinishReason:
    """Map a provider's finish/stop reason to `stop`, `length`, `refusal` or `other`.

    `provider` is `openai` (also OpenAI-compatible servers) or `anthropic`. `refusal=True` says
    the provider flagged a refusal some other way (OpenAI's `message.refusal` field) and wins.
    """
    if refusal:
        return "refusal"
    if raw is None:
        return "other"
    table = _ANTHROPIC_FINISH if provider == "anthropic" else _OPENAI_FINISH
    return table.get(raw, "other")


# --- sections -------------------------------------------------------------------------------------

_SECTION_NAMES = {
    "core": r"core\s+question",
    "info": r"(?:problem[-\s]solving|solving|key|relevant|given)\s+info(?:rmation)?",
    "solution": r"(?:step[-\s]by[-\s]step\s+)?solution(?:\s+steps)?",
}
_HEADING_RE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:(?:\d+|[A-Za-z])[.)][ \t]*)?(?:stage[ \t]*\d[ \t]*[:.-]?[ \t]*)?"
    r"(?P<b1>\*\*|__)?[ \t]*(?P<name>"
    + "|".join(f"(?P<{key}>{pattern})" for key, pattern in _SECTION_NAMES.items())
    + r")[ \t]*(?P<b2>\*\*|__)?[ \t]*(?P<colon>[:：])?[ \t]*(?:\*\*|__)?[ \t]*(?P<rest>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_BULLET_RE = re.compile(r"^[ \t]*(?:[-*•+]|\d+[.)]|\(\d+\))[ \t]+(?P<item>.*\S)[ \t]*$")
_MD_EMPH_RE = re.compile(r"(\*\*|__)")
_REFUSAL_RE = re.compile(
    r"^\W*(?:i'?m\s+sorry|i\s+am\s+sorry|sorry,|i\s+apologi[sz]e|as\s+an\s+ai\b|"
    r"i\s+(?:can(?:no|')t|cannot|won'?t|will\s+not)\s+(?:help|assist|comply|provide|answer|do\s+that)|"
    r"i(?:'m|\s+am)\s+(?:unable|not\s+able)\s+to)",
    re.IGNORECASE,
)


@dataclass(slots=True)
class _Section:
    key: str
    start: int  # where the heading line starts
    body_start: int  # where the section's text starts (after the colon on the heading line)


def _find_sections(text: str) -> dict[str, _Section]:
    """The first heading of each kind, in text order (a later section must follow an earlier)."""
    found: dict[str, _Section] = {}
    for m in _HEADING_RE.finditer(text):
        key = next(k for k in _SECTION_NAMES if m.group(k) is not None)
        if key in found:
            continue
        bold = m.group("b1") is not None or m.group(0).lstrip().startswith("#")
        if not (m.group("colon") or bold or not m.group("rest").strip()):
            continue  # "Solution is easy." is prose, not a heading
        found[key] = _Section(key, m.start(), m.start("rest"))
    return found


def _section_texts(text: str) -> dict[str, str]:
    sections = sorted(_find_sections(text).values(), key=lambda s: s.start)
    out: dict[str, str] = {}
    for i, section in enumerate(sections):
        end = sections[i + 1].start if i + 1 < len(sections) else len(text)
        out[section.key] = text[section.body_start : end].strip()
    return out


def _clean(line: str) -> str:
    return _MD_EMPH_RE.sub("", line).strip()


def _parse_core(body: str) -> str | ParseFailure:
    paragraph = re.split(r"\n[ \t]*\n", body.strip(), maxsplit=1)[0]
    lines = [_clean(line) for line in paragraph.splitlines()]
    lines = [m.group("item") if (m := _BULLET_RE.match(line)) else line for line in lines]
    core = " ".join(line for line in lines if line)
    if not core:
        return ParseFailure("malformed", "the core question is empty")
    if len(core) > MAX_CORE_QUESTION_CHARS:
        return ParseFailure("malformed", f"the core question is over {MAX_CORE_QUESTION_CHARS} characters")
    return core


def _parse_info(body: str, *, require_bullets: bool) -> list[str] | ParseFailure:
    items: list[str] = []
    saw_bullet = False
    for raw in body.splitlines():
        if not raw.strip():
            continue
        m = _BULLET_RE.match(raw)
        if m:
            saw_bullet = True
            items.append(_clean(m.group("item")))
        elif saw_bullet and raw[:1] in " \t":
            items[-1] = f"{items[-1]} {_clean(raw)}"  # an indented continuation of an item
        else:
            items.append(_clean(raw))
    items = [item for item in items if item]
    if not items:
        return ParseFailure("malformed", "the problem-solving information is empty")
    if require_bullets and not saw_bullet:
        return ParseFailure("malformed", "no list of problem-solving information (expected '- ' items)")
    return items


# --- CoT answers ---------------------------------------------------------------------------------

_ANSWER_LINE_RES = (
    re.compile(
        r"^[ \t>*_#]*(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:final\s+)?answer\s+is"
        r"[ \t*_]*[:：]?[ \t*_]*(?P<ans>.*)$",
        re.IGNORECASE | re.MULTILINE,
    ),
    re.compile(r"^[ \t]*####[ \t]*(?P<ans>.*)$", re.MULTILINE),
    re.compile(
        r"^[ \t>*_#]*(?:final\s+)?answer[ \t*_]*[:：][ \t*_]*(?P<ans>.*)$", re.IGNORECASE | re.MULTILINE
    ),
)
_BOXED_RE = re.compile(r"\\boxed\{(?P<ans>[^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def _clean_answer(text: str) -> str:
    ans = _MD_EMPH_RE.sub("", text).strip()
    boxed = _BOXED_RE.search(ans)
    if boxed:
        ans = boxed.group("ans").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$")):
        if ans.startswith(left) and ans.endswith(right) and len(ans) > len(left) + len(right):
            ans = ans[len(left) : -len(right)].strip()
    if ans.endswith(".") and not ans.endswith(".."):
        ans = ans[:-1].rstrip()
    return ans


def _parse_cot(body: str) -> Solution | ParseFailure:
    best: re.Match[str] | None = None
    for pattern in _ANSWER_LINE_RES:
        for m in pattern.finditer(body):
            if m.group("ans").strip() and (best is None or m.start() > best.start()):
                best = m
    if best is None:
        boxed = list(_BOXED_RE.finditer(body))
        if boxed:
            m = boxed[-1]
            steps = body[: m.start()].strip()
            answer = _clean_answer(m.group("ans"))
            return Solution(solution_text=steps, final_answer_text=answer) if answer else _no_answer()
        return _no_answer()
    answer = _clean_answer(best.group("ans"))
    if not answer:
        return _no_answer()
    steps = body[: best.start()].strip()
    return Solution(solution_text=steps, final_answer_text=answer)


def _no_answer() -> ParseFailure:
    return ParseFailure("malformed", "no final answer line (expected 'The answer is: <number>')")


# --- PoT programs ---------------------------------------------------------------------------------

_FENCE_RE = re.compile(
    r"^[ \t]*(?P<fence>```|~~~)[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_ASSIGNS_ANS_RE = re.compile(r"^[ \t]*ans[ \t]*(?::[^=\n]+)?(?:[-+*/%]|//|\*\*)?=(?!=)", re.MULTILINE)
_CODE_START_RE = re.compile(
    r"^(?:[A-Za-z_][\w.\[\]'\"]*[ \t]*(?:[-+*/%]|//|\*\*)?=(?!=)|def |import |from \w|for |while "
    r"|if |#)"
)
_CODE_CONTINUE_RE = re.compile(
    r"^(?:[ \t]|#|[\])}]|(?:return|else|elif|try|except|finally|with|print|pass|break|continue)\b"
    r"|[A-Za-z_][\w.]*\(.*\)[ \t]*$)"
)


def _code_blocks(body: str) -> list[str]:
    blocks = []
    for m in _FENCE_RE.finditer(body):
        if m.group("lang").lower() in ("", "python", "py", "python3"):
            blocks.append(m.group("code"))
    return blocks


def _bare_code(body: str) -> str | None:
    """Code written without fences: from the first line that looks like Python, up to the first
    line after it that looks like prose."""
    lines = body.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START_RE.match(line)), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and not (_CODE_START_RE.match(line) or _CODE_CONTINUE_RE.match(line)):
            break
        end += 1
    return "\n".join(lines[start:end])


def _check_program(code: str) -> str | ParseFailure:
    program = code.strip("\n").rstrip()
    try:
        ast.parse(program)
    except SyntaxError as exc:
        return ParseFailure("malformed", f"the program is not valid Python (line {exc.lineno}: {exc.msg})")
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return ParseFailure("malformed", f"the program cannot be parsed ({type(exc).__name__})")
    return program + "\n"


def _parse_pot(body: str) -> Solution | ParseFailure:
    blocks = _code_blocks(body)
    candidates = [b for b in blocks if _ASSIGNS_ANS_RE.search(b)]
    if not candidates and not blocks:
        bare = _bare_code(body)
        if bare is not None and _ASSIGNS_ANS_RE.search(bare):
            candidates = [bare]
    if not candidates:
        what = "no code block assigns `ans`" if blocks else "no program that assigns `ans`"
        return ParseFailure("malformed", what)
    checked = _check_program(candidates[-1])
    if isinstance(checked, ParseFailure):
        return checked
    return Solution(program=checked)


def _parse_solution(body: str, mode: Mode) -> Solution | ParseFailure:
    if not body.strip():
        return ParseFailure("malformed", "the solution is empty")
    return _parse_pot(body) if mode == "pot" else _parse_cot(body)


# --- entry points ---------------------------------------------------------------------------------


def _precheck(text: str | None, finish_reason: FinishReason) -> ParseFailure | str:
    if finish_reason == "refusal":
        snippet = (text or "").strip()[:200]
        return ParseFailure("refused", f"the provider reported a refusal{': ' + snippet if snippet else ''}")
    if text is None or not text.strip():
        if finish_reason == "length":
            return ParseFailure("truncated", "the token limit was reached before any text")
        return ParseFailure("empty", "the response has no text")
    if finish_reason == "length":
        return ParseFailure("truncated", "the response was cut at the token limit (finish reason 'length')")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _refusal_or(text: str, failure: ParseFailure) -> ParseFailure:
    if _REFUSAL_RE.match(text):
        return ParseFailure("refused", f"the response is a refusal: {text[:200]}")
    return failure


def parse_response(text: str | None, finish_reason: FinishReason, mode: Mode) -> KeyPoints | ParseFailure:
    """Parse a single-mode answer (the three sections in one text) for `mode` `cot` or `pot`."""
    try:
        checked = _precheck(text, finish_reason)
        if isinstance(checked, ParseFailure):
            return checked
        result = _parse_single(checked, mode)
        return _refusal_or(checked, result) if isinstance(result, ParseFailure) else result
    except Exception as exc:  # a parser bug must not sink a batch: report it as data
        return ParseFailure("malformed", f"parser error {type(exc).__name__}: {exc}")


def _parse_single(text: str, mode: Mode) -> KeyPoints | ParseFailure:
    sections = _section_texts(text)
    missing = [name for key, name in _MISSING_NAMES.items() if key not in sections]
    if missing:
        return ParseFailure("malformed", f"missing section(s): {', '.join(missing)}")
    core = _parse_core(sections["core"])
    if isinstance(core, ParseFailure):
        return core
    info = _parse_info(sections["info"], require_bullets=False)
    if isinstance(info, ParseFailure):
        return info
    solution = _parse_solution(sections["solution"], mode)
    if isinstance(solution, ParseFailure):
        return solution
    return KeyPoints(core, info, solution.solution_text, solution.final_answer_text, solution.program)


_MISSING_NAMES = {"core": "Core question", "info": "Problem-solving information", "solution": "Solution"}


def parse_stage(
    text: str | None, finish_reason: FinishReason, mode: Mode, stage: Stage
) -> StageOutput | KeyPoints | ParseFailure:
    """Parse the answer to one staged prompt.

    Returns the core question (`str`) for stage `core_question`, the list of facts for
    `solving_info`, a `Solution` for `solution`, and `KeyPoints` for `all` (same as
    `parse_response`). The heading of the stage's section is optional; without it, a core
    question must be one paragraph and the information must be a list.
    """
    if stage == "all":
        return parse_response(text, finish_reason, mode)
    try:
        checked = _precheck(text, finish_reason)
        if isinstance(checked, ParseFailure):
            return checked
        result = _parse_one_stage(checked, mode, stage)
        return _refusal_or(checked, result) if isinstance(result, ParseFailure) else result
    except Exception as exc:
        return ParseFailure("malformed", f"parser error {type(exc).__name__}: {exc}")


def _parse_one_stage(text: str, mode: Mode, stage: Stage) -> StageOutput | ParseFailure:
    sections = _section_texts(text)
    if stage == "core_question":
        if "core" in sections:
            return _parse_core(sections["core"])
        if sections or re.search(r"\n[ \t]*\n", text):
            return ParseFailure("malformed", "expected one core question ('Core question: ...')")
        return _parse_core(text)
    if stage == "solving_info":
        if "info" in sections:
            return _parse_info(sections["info"], require_bullets=False)
        return _parse_info(text, require_bullets=True)
    body = sections.get("solution", text)
    return _parse_solution(body, mode)


def assemble_key_points(core_question: str, solving_info: list[str], solution: Solution) -> KeyPoints:
    """The KeyPoints of a staged chain from its three parsed stage outputs."""
    return KeyPoints(
        core_question,
        list(solving_info),
        solution.solution_text,
        solution.final_answer_text,
        solution.program,
    )
