"""`kpdd probe`: send a few problems to a teacher and show what came back, before a large job.

For each problem: the parsed key points (or why there are none), whether the answer is right
(CoT: answer matching; PoT: the program run in the sandbox), the cost and the latency. Then a
summary with an estimate per 1,000 problems and the number of answers read through the
low-confidence fallback of answer matching (as `kpdd validate` counts them). Calls go through the
response cache like any other, so probing the same problems twice pays once; `--refresh` sends
them again and stores the new responses over the cached ones.

Exit codes: 0 when the probe ran (wrong answers and per-problem failures are results); 2 for a
bad spec, option, corpus or missing key, or a key the provider rejected; 1 when every problem
failed at the call level (the teacher is unreachable).
"""

from __future__ import annotations

import argparse
import statistics
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.cli.common import database_engine, print_json
from services.config import get_settings
from services.errors import BadInputError, ConfigError, RunFailure
from services.kpdd.records import MODES, STAGE_MODES, KeyPoints, ParseFailure
from services.teachers.keys import DEFAULT_KEY_VARIABLES
from services.teachers.pricing import usd_text

if TYPE_CHECKING:
    from services.teachers.judging import AnswerJudge, ProbeVerdict
    from services.teachers.rationale import CallFailure, RationaleOutcome
    from services.teachers.spec import TeacherSpec

# The teacher clients (and their SDKs), the judge and SQLAlchemy are imported inside the functions
# that use them, so building the parser (`kpdd probe --help`) stays light.

MAX_PROBE_PROBLEMS = 1000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe = sub.add_parser(
        "probe",
        help="send a few problems to a teacher: key points, right or wrong, cost, latency",
        description="Teacher spec: PROVIDER:MODEL[@BASE_URL][,OPTION=VALUE]..., e.g. openai:gpt-4o-mini, "
        "anthropic:claude-3-5-haiku-latest, openai-compatible:Qwen2.5-72B-Instruct@http://host:8000/v1, "
        "sim:gold (the simulator; no key, no server needed). See docs/teachers.md.",
    )
    probe.add_argument("--teacher", required=True, metavar="SPEC", help="the teacher spec")
    probe.add_argument(
        "--teacher-option",
        "-O",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a generation option (repeatable): temperature, top_p, max_tokens, seed (OpenAI), "
        "top_k (Anthropic), api_key_env",
    )
    probe.add_argument("--corpus", required=True, help="corpus name (see `kpdd corpora`)")
    probe.add_argument("--split", help="split name (default: every split, in ingestion order)")
    probe.add_argument("--limit", type=int, default=5, help="how many problems to send (default 5)")
    probe.add_argument("--mode", choices=MODES, default="cot", help="cot (text) or pot (program)")
    probe.add_argument(
        "--stage-mode", choices=STAGE_MODES, default="single", help="one call, or three chained calls"
    )
    probe.add_argument("--sample-index", type=int, default=0, help="which sample (0: the first)")
    probe.add_argument(
        "--refresh",
        action="store_true",
        help="bypass the response cache: call again and store the new responses over the cached ones",
    )
    probe.add_argument("--json", action="store_true", help="print one JSON document")
    probe.set_defaults(handler=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from db.queries.corpora import first_problems
    from services.teachers.judging import AnswerJudge
    from services.teachers.rationale import CallFailure, RationaleWork, produce_rationale
    from services.teachers.registry import build_client
    from services.teachers.spec import parse_option_pairs, parse_spec

    if not 1 <= args.limit <= MAX_PROBE_PROBLEMS:
        raise BadInputError(f"--limit must be between 1 and {MAX_PROBE_PROBLEMS} (got {args.limit})")
    if args.sample_index < 0:
        raise BadInputError("--sample-index must be 0 or more")
    # Spec and options first: a typo fails before the database or the network is touched.
    spec = parse_spec(args.teacher, parse_option_pairs(args.teacher_option))
    settings = get_settings()
    engine = database_engine(settings)
    with Session(engine) as session:
        problems = first_problems(session, args.corpus, args.split, args.limit)
    if not problems:
        where = f"{args.corpus}/{args.split}" if args.split else args.corpus
        raise BadInputError(
            f"corpus {where} has no problems: check `kpdd corpora`, or load one with "
            f"`kpdd ingest FORMAT PATH --corpus {args.corpus}`"
        )
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    outcomes: list[RationaleOutcome] = []
    verdicts: list[ProbeVerdict] = []
    with (
        build_client(spec, database_url=settings.resolved_database_url) as client,
        AnswerJudge() as judge,
    ):
        for problem in problems:
            work = RationaleWork(
                problem.question,
                args.mode,
                args.stage_mode,
                args.sample_index,
                problem_id=problem.id,
                refresh=args.refresh,
            )
            outcome = produce_rationale(engine, client, work)
            if isinstance(outcome.result, CallFailure) and outcome.result.kind == "auth":
                raise ConfigError(_auth_message(spec, outcome.result))
            verdict = _verdict(judge, outcome, problem.gold_answer)
            outcomes.append(outcome)
            verdicts.append(verdict)
            rows.append(
                {
                    "problem_id": problem.id,
                    "split": problem.split,
                    "source_id": problem.source_id,
                    "question": problem.question,
                    "gold_answer": problem.gold_answer,
                    "outcome": outcome.to_json(),
                    "verdict": verdict.to_json(),
                }
            )
            if not args.json:
                _print_problem(
                    len(rows), problem.split, problem.source_id, problem.gold_answer, outcome, verdict
                )
    summary = _summary(outcomes, verdicts, time.perf_counter() - started)
    if args.json:
        print_json(
            {
                "teacher": spec.to_text(),
                "corpus": args.corpus,
                "split": args.split,
                "mode": args.mode,
                "stage_mode": args.stage_mode,
                "prompt_version": outcomes[0].prompt_version,
                "problems": rows,
                "summary": summary,
            }
        )
    else:
        _print_summary(spec, args, outcomes[0].prompt_version, summary)
    if summary["call_failures"] == len(outcomes):
        kinds = ", ".join(f"{k} {v}" for k, v in summary["call_failures_by_kind"].items())
        raise RunFailure(f"every call to {spec.label} failed ({kinds}); see the messages above")
    return 0


def _verdict(judge: AnswerJudge, outcome: RationaleOutcome, gold: str | None) -> ProbeVerdict:
    from services.teachers.judging import unchecked

    result = outcome.result
    if isinstance(result, KeyPoints):
        return judge.judge(result, gold)
    if isinstance(result, ParseFailure):
        return unchecked(result.message, kind=f"parse_{result.kind}")
    return unchecked(result.message, kind=f"call_{result.kind}")


def _auth_message(spec: TeacherSpec, failure: CallFailure) -> str:
    variable = spec.options.api_key_env or DEFAULT_KEY_VARIABLES.get(spec.provider)
    where = f"the key in {variable}" if variable else "the request"
    return f"{spec.label} rejected {where}: {failure.message}; check the key and its permissions"


def _summary(
    outcomes: list[RationaleOutcome], verdicts: list[ProbeVerdict], seconds: float
) -> dict[str, Any]:
    from services.teachers.rationale import CallFailure
    from services.validation.verdict import count_read_by_fallback

    n = len(outcomes)
    right = sum(1 for v in verdicts if v.match is True)
    wrong = sum(1 for v in verdicts if v.checked and v.match is False)
    parse_kinds: dict[str, int] = {}
    call_kinds: dict[str, int] = {}
    for outcome in outcomes:
        if isinstance(outcome.result, ParseFailure):
            parse_kinds[outcome.result.kind] = parse_kinds.get(outcome.result.kind, 0) + 1
        elif isinstance(outcome.result, CallFailure):
            call_kinds[outcome.result.kind] = call_kinds.get(outcome.result.kind, 0) + 1
    costs = [o.cost_usd for o in outcomes]
    priced = all(c is not None for c in costs)
    cost = sum((c for c in costs if c is not None), Decimal(0))
    paid = sum(o.paid_calls for o in outcomes)
    # The per-1000 estimate uses what the calls would cost, replays included at their stored price.
    full_cost = Decimal(0)
    stored_priced = True
    for outcome in outcomes:
        for call in outcome.calls:
            if call.stored_cost_usd is not None:
                full_cost += call.stored_cost_usd
            elif call.status != "failed":
                stored_priced = False
    latencies = [o.latency_ms for o in outcomes if o.calls]
    return {
        "problems": n,
        "right": right,
        "wrong": wrong,
        "unchecked": n - right - wrong,
        # Verdicts whose answer came from the last-number fallback (confidence `low`).
        "fallback": count_read_by_fallback(verdicts),
        "parse_failures": sum(parse_kinds.values()),
        "parse_failures_by_kind": parse_kinds,
        "call_failures": sum(call_kinds.values()),
        "call_failures_by_kind": call_kinds,
        "paid_calls": paid,
        "cached_calls": sum(o.cached_calls for o in outcomes),
        "attempts": sum(c.attempts for o in outcomes for c in o.calls),
        "tokens_in": sum(o.tokens_in for o in outcomes),
        "tokens_out": sum(o.tokens_out for o in outcomes),
        "cost_usd": usd_text(cost) if priced else None,
        "est_cost_per_1000_usd": (
            format((full_cost * 1000 / n).quantize(Decimal("0.01")), "f") if stored_priced else None
        ),
        "latency_ms_p50": int(statistics.median(latencies)) if latencies else None,
        "latency_ms_max": max(latencies) if latencies else None,
        "wall_s": round(seconds, 3),
    }


def _money(value: Decimal | str | None) -> str:
    if value is None:
        return "unknown (no price for this model: add it to a file named by KPDD_PRICES_FILE)"
    return f"${Decimal(value):.6f}"


def _print_problem(
    index: int,
    split: str,
    source_id: str,
    gold: str | None,
    outcome: RationaleOutcome,
    verdict: ProbeVerdict,
) -> None:
    from services.teachers.rationale import CallFailure

    if verdict.match is True:
        mark = "RIGHT"
    elif verdict.checked and verdict.match is False:
        mark = f"WRONG ({verdict.kind})"
    else:
        mark = verdict.kind.upper()
    calls = f"{outcome.paid_calls} paid" + (
        f", {outcome.cached_calls} cached" if outcome.cached_calls else ""
    )
    print(
        f"[{index}] {split}/{source_id}  {mark}  answer {verdict.extracted!r} gold {gold!r}  "
        f"{_money(outcome.cost_usd)}  {outcome.latency_ms} ms  ({calls})"
    )
    result = outcome.result
    if isinstance(result, KeyPoints):
        print(f"    core question: {result.core_question}")
        print("    problem-solving information:")
        for item in result.solving_info:
            print(f"      - {item}")
        if result.program is not None:
            print("    program:")
            for line in result.program.rstrip().splitlines():
                print(f"      {line}")
        else:
            print("    solution:")
            for line in (result.solution_text or "").splitlines():
                print(f"      {line}")
            print(f"    final answer: {result.final_answer_text}")
    else:
        stage = f" at stage {result.stage}" if isinstance(result, CallFailure) else ""
        print(f"    {verdict.kind}{stage}: {result.message}")
    if verdict.reason and isinstance(result, KeyPoints):
        print(f"    verdict: {verdict.reason}")
    print()


def _print_summary(spec: TeacherSpec, args: argparse.Namespace, version: str, s: dict[str, Any]) -> None:
    print(f"teacher {spec.to_text()}  mode {args.mode}/{args.stage_mode}  prompt {version}")
    print(
        f"problems {s['problems']}: right {s['right']}, wrong {s['wrong']}, unchecked {s['unchecked']} "
        f"(parse failures {s['parse_failures']}, call failures {s['call_failures']}); "
        f"{s['fallback']} read through the low-confidence last-number fallback"
    )
    for label, kinds in (("parse", s["parse_failures_by_kind"]), ("call", s["call_failures_by_kind"])):
        if kinds:
            print(f"  {label} failures: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(
        f"calls: {s['paid_calls']} paid, {s['cached_calls']} replayed from the cache, "
        f"{s['attempts']} HTTP attempts; tokens {s['tokens_in']:,} in / {s['tokens_out']:,} out"
    )
    estimate = s["est_cost_per_1000_usd"]
    per_1000 = f" (about ${estimate} per 1,000 problems)" if estimate is not None else ""
    print(f"cost {_money(s['cost_usd'])}{per_1000}")
    if s["latency_ms_p50"] is not None:
        print(f"latency per problem: median {s['latency_ms_p50']} ms, max {s['latency_ms_max']} ms")
