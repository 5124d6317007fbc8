"""`kpdd teacher-sim`: run the teacher simulator (OpenAI and Anthropic wire formats) in the foreground.

When every worker accepts connections it prints one JSON line on stdout,
`{"event": "ready", "url": ..., "openai_base_url": ..., "problems": N, "workers": W}`, so a
parent process can wait for it, and a human line on stderr. Stop it with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from services.errors import BadInputError
from services.teachers.simulator.bank import CorpusSource
from services.teachers.simulator.config import LATENCY_DISTS, SimulatorConfig
from services.teachers.simulator.faults import FaultRates

_FAULT_OPTIONS = (
    ("--wrong-rate", "wrong", "answers with a wrong final answer"),
    ("--malformed-rate", "malformed", "answers that ignore the format (the parser says malformed)"),
    ("--truncate-rate", "truncate", "answers cut short with finish reason length / max_tokens"),
    ("--refusal-rate", "refusal", "refusals (OpenAI message.refusal; Anthropic stop_reason refusal)"),
    ("--error-rate", "server_error", "HTTP 500 errors"),
    (
        "--rate-limit-fault-rate",
        "rate_limit",
        "injected HTTP 429 errors (Retry-After: 1), besides --rpm/--tpm",
    ),
    ("--hang-rate", "hang", "requests that never answer (until the client times out)"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "teacher-sim",
        help="run the teacher simulator (OpenAI + Anthropic APIs) with latency, limits and faults",
        description=(
            "Serve POST /v1/chat/completions (OpenAI) and POST /v1/messages (Anthropic), answering "
            "KPDD prompts from gold solutions of the problems loaded with --corpus or --from-db; a "
            "problem it does not know is refused (HTTP 422), never answered with an invented answer. "
            "Force a "
            "fault per request with the header 'x-sim-fault: KIND[*N]' or a model name ending in "
            "'+fault=KIND[*N]' (KIND: 429, 500, hang, wrong, malformed, truncate, refusal, none). "
            "Also serves the batch APIs: OpenAI Files + Batch (POST /v1/files, /v1/batches, "
            "GET /v1/batches[/ID], /v1/files/ID/content, POST /v1/batches/ID/cancel) and Anthropic "
            "Message Batches (/v1/messages/batches[/ID[/cancel|/results]]); a batch ends "
            "--batch-delay-s after creation, with --batch-error-rate of its requests failing "
            "(retryably) and optional expiry (--batch-expire-after-s). "
            "Counters: GET /_sim/stats; batch resubmissions: GET /_sim/batch-stats."
        ),
    )
    add_arguments(p)
    p.set_defaults(handler=run_teacher_sim)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `kpdd teacher-sim` (shared with `python -m services.teachers.simulator`)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="FORMAT:PATH",
        help="load problems and gold answers from a corpus file (repeatable), e.g. "
        "gsm8k:../shared/datasets/gsm8k/train.jsonl",
    )
    p.add_argument("--from-db", action="store_true", help="also load every problem of the kpdd database")
    p.add_argument("--seed", type=int, default=0, help="seed of fault draws and latency (default 0)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="mean answer latency in ms (default 0)")
    p.add_argument("--latency-jitter-ms", type=float, default=0.0, help="latency spread in ms (default 0)")
    p.add_argument(
        "--latency-dist",
        choices=LATENCY_DISTS,
        default="normal",
        help="latency distribution (default normal)",
    )
    p.add_argument("--ms-per-token", type=float, default=0.0, help="extra latency per completion token, ms")
    p.add_argument("--rpm", type=float, default=0.0, help="requests per minute per model (0: unlimited)")
    p.add_argument("--tpm", type=float, default=0.0, help="tokens per minute per model (0: unlimited)")
    for flag, _field, what in _FAULT_OPTIONS:
        p.add_argument(flag, type=float, default=0.0, metavar="P", help=f"probability of {what}")
    p.add_argument(
        "--fault-retry-after-s", type=float, default=1.0, help="Retry-After of injected 429s (default 1)"
    )
    p.add_argument("--hang-max-s", type=float, default=600.0, help="a hung request answers 504 after this")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT); limits are then per worker (limit/N)",
    )
    p.add_argument(
        "--batch-delay-s",
        type=float,
        default=1.0,
        help="seconds from a batch's creation to its end (default 1)",
    )
    p.add_argument(
        "--batch-error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a batch request answered with a retryable server error (default 0)",
    )
    p.add_argument(
        "--batch-expire-after-s",
        type=float,
        default=None,
        help="a batch expires at this age if it is below --batch-delay-s: its first n*expire/delay "
        "requests are answered, the rest expired (default: never)",
    )
    p.add_argument(
        "--batch-dir",
        default=None,
        help="directory of batch state, shared by the workers (default: a temporary one, removed on exit)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    try:
        rates = FaultRates(
            **{field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in _FAULT_OPTIONS}
        )
        return SimulatorConfig(
            host=args.host,
            port=args.port,
            seed=args.seed,
            latency_ms=args.latency_ms,
            latency_jitter_ms=args.latency_jitter_ms,
            latency_dist=args.latency_dist,
            ms_per_output_token=args.ms_per_token,
            rpm=args.rpm,
            tpm=args.tpm,
            faults=rates,
            fault_retry_after_s=args.fault_retry_after_s,
            hang_max_s=args.hang_max_s,
            corpora=[CorpusSource.parse(spec) for spec in args.corpus],
            from_db=args.from_db,
            workers=args.workers,
            batch_delay_s=args.batch_delay_s,
            batch_error_rate=args.batch_error_rate,
            batch_expire_after_s=args.batch_expire_after_s,
            batch_dir=args.batch_dir,
        )
    except ValueError as exc:
        raise BadInputError(f"teacher-sim: {exc}") from None


def run_teacher_sim(args: argparse.Namespace) -> int:
    from services.teachers.simulator.server import serve

    config = config_from_args(args)

    def ready(url: str, problems: int) -> None:
        line = {
            "event": "ready",
            "url": url,
            "openai_base_url": f"{url}/v1",
            "problems": problems,
            "workers": config.workers,
        }
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
        print(
            f"kpdd teacher-sim: serving {problems} known problems at {url} "
            f"(OpenAI base_url {url}/v1, Anthropic base_url {url}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if problems == 0:
            print(
                "kpdd teacher-sim: warning: no problems loaded, so every model request is refused "
                "(422); give --corpus FORMAT:PATH or --from-db",
                file=sys.stderr,
                flush=True,
            )

    serve(config, ready)
    return 0
