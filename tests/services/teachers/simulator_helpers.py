"""Shared helpers of the simulator tests: the GSM8K bank, and one KPDD call through each SDK."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anthropic
import openai

from services.kpdd.parsing import assemble_key_points, normalise_finish_reason, parse_response, parse_stage
from services.kpdd.prompts import RenderedPrompt, render_prompt
from services.kpdd.records import FinishReason, KeyPoints, Mode, ParseFailure, Solution, StageMode
from services.teachers.simulator import CorpusSource, ProblemBank

REPO_ROOT = Path(__file__).resolve().parents[3]
DATASETS = Path(os.environ.get("KPDD_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets"))
GSM8K_TRAIN = DATASETS / "gsm8k" / "train.jsonl"
API_KEY = "sk-test-DO-NOT-ECHO-4f1d"
_BANK: ProblemBank | None = None


def gsm8k_bank() -> ProblemBank:
    """GSM8K train, loaded once per test session (about 0.1 s)."""
    global _BANK
    if _BANK is None:
        _BANK = ProblemBank()
        _BANK.load_corpus(CorpusSource("gsm8k", GSM8K_TRAIN))
    return _BANK


def openai_client(base_url: str, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 10.0)
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=kwargs.pop("api_key", API_KEY), **kwargs)


def anthropic_client(base_url: str, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 10.0)
    return anthropic.Anthropic(base_url=base_url, api_key=kwargs.pop("api_key", API_KEY), **kwargs)


def call(
    client: openai.OpenAI | anthropic.Anthropic,
    prompt: RenderedPrompt,
    *,
    model: str = "gold",
    max_tokens: int = 2000,
    headers: dict[str, str] | None = None,
) -> tuple[str | None, FinishReason]:
    """One call through the official SDK: the answer text and the normalised finish reason."""
    if isinstance(client, openai.OpenAI):
        response = client.chat.completions.create(
            model=model,
            messages=prompt.openai_messages(),  # type: ignore[arg-type]
            max_completion_tokens=max_tokens,
            extra_headers=headers,
        )
        choice = response.choices[0]
        refusal = choice.message.refusal
        text = choice.message.content if refusal is None else refusal
        return text, normalise_finish_reason("openai", choice.finish_reason, refusal=refusal is not None)
    message = client.messages.create(
        model=model,
        system=prompt.system,
        messages=prompt.messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        extra_headers=headers,
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    return text, normalise_finish_reason("anthropic", message.stop_reason)


def key_points_via(
    client: openai.OpenAI | anthropic.Anthropic,
    question: str,
    mode: Mode,
    stage_mode: StageMode,
    **kwargs: Any,
) -> KeyPoints | ParseFailure:
    """Run the whole KPDD chain (one call, or three staged calls) and parse it."""
    if stage_mode == "single":
        text, finish = call(client, render_prompt(question, mode), **kwargs)
        return parse_response(text, finish, mode)
    text, finish = call(client, render_prompt(question, mode, "staged", "core_question"), **kwargs)
    core = parse_stage(text, finish, mode, "core_question")
    if isinstance(core, ParseFailure):
        return core
    assert isinstance(core, str)
    prompt = render_prompt(question, mode, "staged", "solving_info", core_question=core)
    text, finish = call(client, prompt, **kwargs)
    info = parse_stage(text, finish, mode, "solving_info")
    if isinstance(info, ParseFailure):
        return info
    assert isinstance(info, list)
    prompt = render_prompt(question, mode, "staged", "solution", core_question=core, solving_info=info)
    text, finish = call(client, prompt, **kwargs)
    solution = parse_stage(text, finish, mode, "solution")
    if isinstance(solution, ParseFailure):
        return solution
    assert isinstance(solution, Solution)
    return assemble_key_points(core, info, solution)
