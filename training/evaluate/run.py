"""`evaluate`: score a student on test items; `evaluate_items`: the same with any `GenerateFn`.

    result = evaluate("runs/7/final", read_items(Path("gsm8k-test.jsonl")), out_dir=Path("eval/7"))
    result.results["overall"]["accuracy"]

In-process use (after training, the model still in memory): build a `StudentGenerator` from the
model and tokenizer and call `evaluate_items`. Either way the caller may pass a started
`Sandbox` to share (it is then not closed); otherwise a PoT evaluation starts one before any
generation (so a machine that cannot run programs fails before spending GPU time) and closes it
at the end. Generation runs stage by stage over all items (see `chain`); judging after it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.validation.sandbox import Sandbox, SandboxError
from training.evaluate.chain import run_chain
from training.evaluate.errors import EvalInputError, EvalRunError
from training.evaluate.generation import GenerateFn, StudentGenerator
from training.evaluate.items import EvalItem, check_unique
from training.evaluate.judging import judge_outcomes
from training.evaluate.report import Prediction, summarise, write_outputs
from training.evaluate.student import (
    load_student,
    pick_device,
    read_student_info,
    resolve_layout_mode,
)

log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 32


@dataclass(slots=True)
class EvalResult:
    """Every prediction (input order) and the `results.json` document (see `report`)."""

    layout: str
    mode: str
    predictions: list[Prediction]
    results: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return float(self.results["overall"]["accuracy"])

    def write(self, out_dir: Path) -> None:
        write_outputs(out_dir, self.predictions, self.results)


def evaluate(
    model_dir: Path | str,
    items: Sequence[EvalItem],
    *,
    layout: str | None = None,
    mode: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    device: str | None = None,
    out_dir: Path | None = None,
    sandbox: Sandbox | None = None,
    program_timeout_s: float | None = None,
    generate_fn: GenerateFn | None = None,
) -> EvalResult:
    """Load the student in `model_dir`, run `layout` x `mode` (defaults: the student's) on
    `items`, judge, and write `out_dir` when given.

    `max_new_tokens` defaults to the student's `max_target_tokens` (per stage). `generate_fn`
    replaces the model (it is then not loaded; tests inject outputs this way).
    Raises `EvalInputError` for bad arguments or a bad student, `EvalRunError` when the
    sandbox cannot run programs.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise EvalInputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise EvalInputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not items:
        raise EvalInputError("no items to evaluate")
    info = read_student_info(Path(model_dir))
    layout, mode = resolve_layout_mode(info, layout, mode)
    limit = max_new_tokens or info.max_target_tokens
    with _sandbox_for(mode, sandbox) as live_sandbox:
        generator: StudentGenerator | None = None
        if generate_fn is None:
            device = pick_device(device)
            model, tokenizer = load_student(Path(model_dir), info, device)
            generator = StudentGenerator(
                model,
                tokenizer,
                arch=info.arch,
                batch_size=batch_size,
                max_new_tokens=limit,
                max_source_tokens=info.max_source_tokens,
                device=device,
            )
            log.info("loaded %s student from %s on %s", info.arch, model_dir, device)
        generate = generator if generator is not None else generate_fn
        assert generate is not None
        result = evaluate_items(
            items,
            layout=layout,
            mode=mode,
            generate=generate,
            sandbox=live_sandbox,
            program_timeout_s=program_timeout_s,
            model=str(model_dir),
            snapshot_id=info.snapshot_id,
            started=started,
        )
    result.results["generation"] = _generation_figures(result, generator, info.max_source_tokens)
    result.results["generation"].update(max_new_tokens=limit, batch_size=batch_size, device=device)
    if out_dir is not None:
        result.write(out_dir)
    return result


def evaluate_items(
    items: Sequence[EvalItem],
    *,
    layout: str,
    mode: str,
    generate: GenerateFn,
    sandbox: Sandbox | None = None,
    program_timeout_s: float | None = None,
    model: str | None = None,
    snapshot_id: str | None = None,
    started: float | None = None,
) -> EvalResult:
    """Run the chain with `generate`, judge every outcome, and summarise (nothing is written).

    For PoT a `sandbox` is used if given, else one is started and closed here. `started` is the
    `time.perf_counter()` the `seconds` figure counts from (default: now).
    """
    started = time.perf_counter() if started is None else started
    if mode not in ("cot", "pot"):
        raise EvalInputError(f"mode {mode!r} is unknown; use cot or pot")
    check_unique(items, "items")
    with _sandbox_for(mode, sandbox) as live_sandbox:
        outcomes = run_chain(items, layout, mode, generate)
        judgements = judge_outcomes(items, outcomes, mode, live_sandbox, program_timeout_s=program_timeout_s)
    predictions = [
        Prediction(item, layout, mode, outcome, judgement)
        for item, outcome, judgement in zip(items, outcomes, judgements, strict=True)
    ]
    results = summarise(
        predictions,
        model=model,
        layout=layout,
        mode=mode,
        seconds=time.perf_counter() - started,
        snapshot_id=snapshot_id,
    )
    return EvalResult(layout, mode, predictions, results)


@contextlib.contextmanager
def _sandbox_for(mode: str, sandbox: Sandbox | None) -> Iterator[Sandbox | None]:
    """The caller's sandbox, or (PoT only) one started now and closed on exit."""
    if mode != "pot" or sandbox is not None:
        yield sandbox
        return
    try:
        own = Sandbox().start()
    except (SandboxError, OSError) as exc:
        raise EvalRunError(
            f"the program sandbox did not start ({exc}); PoT evaluation needs it (see docs/sandbox.md)"
        ) from None
    try:
        yield own
    finally:
        own.close()


def _generation_figures(
    result: EvalResult, generator: StudentGenerator | None, max_source_tokens: int
) -> dict[str, Any]:
    stages = [stage for p in result.predictions for stage in p.outcome.stages]
    over = sum(
        1 for s in stages if s.output.input_tokens is not None and s.output.input_tokens > max_source_tokens
    )
    return {
        "new_tokens": generator.new_tokens if generator is not None else None,
        "cut_at_limit": sum(1 for s in stages if not s.output.stopped),
        "truncated_sources": over,
    }
