"""`kpdd cache`: show and prune the response cache (the stored teacher responses).

`kpdd cache [show]` lists the entries by teacher, prompt version and status, with their count,
what they cost when paid for, and how long ago the oldest and newest were written.
`kpdd cache prune` deletes the entries that match every filter given (`--teacher`,
`--prompt-version`, `--status`, `--older-than`; at least one, or `--all`), with `--dry-run` to
count only. Entries in flight (a worker calling now, or one that crashed while calling, whose
outcome may have been paid) are never pruned.

Pruning keeps lineage honest rather than complete: rationales keep their text, verdict and cost,
and the ids of their calls in `call_ids`, which then point at nothing; the next job or probe
that asks for the same requests pays for them again. Both are said on every prune.
`kpdd generate --refresh` / `kpdd probe --refresh` replace entries instead of deleting them.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.cli.common import database_engine, print_json
from services.config import get_settings
from services.errors import BadInputError

if TYPE_CHECKING:
    from db.queries.cache import CacheFilter, CacheGroup

STATUSES = ("ok", "refused", "failed", "in_flight")
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = sub.add_parser(
        "cache",
        help="show or prune the response cache (stored teacher responses)",
        description=(
            "Show the response cache by teacher, prompt version and status (ACTION show, the "
            "default), or delete entries (ACTION prune) matching every filter given. Entries in "
            "flight are never pruned. Rationales made from pruned responses keep their text; "
            "making them again pays again."
        ),
    )
    cache.add_argument(
        "action", nargs="?", choices=("show", "prune"), default="show", help="show or prune (default: show)"
    )
    cache.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="PROVIDER:MODEL",
        help="only this teacher's entries (repeatable), e.g. sim:gold or openai:gpt-4o-mini",
    )
    cache.add_argument(
        "--prompt-version",
        action="append",
        default=[],
        metavar="VERSION",
        help="only entries of this prompt version (repeatable), e.g. kpdd-cot-single-v1+84c6e04d",
    )
    cache.add_argument(
        "--status",
        action="append",
        default=[],
        choices=STATUSES,
        help="only entries of this status (repeatable)",
    )
    cache.add_argument(
        "--older-than",
        metavar="AGE",
        help="only entries last written longer ago than AGE: a number and a unit s, m, h, d or w (7d, 12h)",
    )
    cache.add_argument("--all", action="store_true", help="prune: every entry (no filter needed)")
    cache.add_argument("--dry-run", action="store_true", help="prune: count what would go, delete nothing")
    cache.add_argument("--json", action="store_true", help="print one JSON document")
    cache.set_defaults(handler=run_cache)


def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `45s`, `2w`, `1.5d` -> a timedelta."""
    match = _AGE_RE.match(text)
    if match is None:
        raise BadInputError(f"--older-than {text!r}: expected a number and a unit s, m, h, d or w, e.g. 7d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def parse_teacher(text: str) -> tuple[str, str]:
    provider, sep, model = text.strip().partition(":")
    if not sep or not provider or not model or "@" in model or "," in model:
        raise BadInputError(f"--teacher {text!r}: expected PROVIDER:MODEL, e.g. sim:gold")
    return provider, model


def age_text(moment: datetime | None, now: datetime) -> str:
    """How long ago, in the largest whole unit: `45s`, `12m`, `3h`, `5d`."""
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _filter(args: argparse.Namespace, now: datetime) -> CacheFilter:
    from db.queries.cache import CacheFilter

    return CacheFilter(
        teachers=[parse_teacher(t) for t in args.teacher],
        prompt_versions=[v.strip() for v in args.prompt_version],
        statuses=list(args.status),
        older_than=now - parse_age(args.older_than) if args.older_than else None,
    )


def _filter_json(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "teachers": list(args.teacher),
        "prompt_versions": list(args.prompt_version),
        "statuses": list(args.status),
        "older_than": args.older_than,
    }


def _check_names(session: Any, where: CacheFilter) -> None:
    """A teacher or prompt version with no entry at all is a typo: say what there is."""
    from db.queries.cache import cached_prompt_versions, cached_teachers

    if where.teachers:
        known = cached_teachers(session)
        missing = [f"{p}:{m}" for p, m in where.teachers if f"{p}:{m}" not in known]
        if missing:
            raise BadInputError(
                f"--teacher: no cached responses of {', '.join(missing)} "
                f"(teachers in the cache: {', '.join(known) or 'none'})"
            )
    if where.prompt_versions:
        versions = cached_prompt_versions(session)
        missing = [v for v in where.prompt_versions if v not in versions]
        if missing:
            raise BadInputError(
                f"--prompt-version: no cached responses of {', '.join(missing)} "
                f"(versions in the cache: {', '.join(versions) or 'none'})"
            )


def run_cache(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    if args.action == "show" and (args.dry_run or args.all):
        raise BadInputError("--dry-run and --all go with `kpdd cache prune`")
    now = datetime.now(UTC)
    where = _filter(args, now)
    engine = database_engine(get_settings())
    if args.action == "show":
        with Session(engine) as session:
            _check_names(session, where)
            from db.queries.cache import cache_groups

            groups = cache_groups(session, where)
        _show(groups, args, now)
        return 0
    if where.empty and not args.all:
        raise BadInputError(
            "kpdd cache prune: give --teacher, --prompt-version, --status or --older-than "
            "(or --all to empty the whole cache)"
        )
    return _prune(engine, where, args)


def _show(groups: list[CacheGroup], args: argparse.Namespace, now: datetime) -> None:
    total = sum(g.entries for g in groups)
    by_status: dict[str, int] = {}
    by_teacher: dict[str, int] = {}
    for group in groups:
        by_status[group.status] = by_status.get(group.status, 0) + group.entries
        by_teacher[group.teacher] = by_teacher.get(group.teacher, 0) + group.entries
    cost = sum((g.cost_usd for g in groups), Decimal(0))
    oldest = min((g.oldest for g in groups if g.oldest), default=None)
    newest = max((g.newest for g in groups if g.newest), default=None)
    if args.json:
        print_json(
            {
                "entries": total,
                "by_status": by_status,
                "by_teacher": by_teacher,
                "cost_usd": format(cost, "f"),
                "oldest": oldest.isoformat() if oldest else None,
                "newest": newest.isoformat() if newest else None,
                "filter": _filter_json(args),
                "groups": [
                    {
                        "teacher": g.teacher,
                        "prompt_version": g.prompt_version,
                        "status": g.status,
                        "entries": g.entries,
                        "cost_usd": format(g.cost_usd, "f"),
                        "oldest": g.oldest.isoformat() if g.oldest else None,
                        "newest": g.newest.isoformat() if g.newest else None,
                        "oldest_age_s": int((now - g.oldest).total_seconds()) if g.oldest else None,
                        "newest_age_s": int((now - g.newest).total_seconds()) if g.newest else None,
                    }
                    for g in groups
                ],
            }
        )
        return
    if not groups:
        print("response cache: no entries" + ("" if _no_filter(args) else " match the filters"))
        return
    statuses = ", ".join(f"{n:,} {s.replace('_', ' ')}" for s, n in sorted(by_status.items()))
    print(
        f"response cache: {total:,} entries ({statuses}), written {age_text(newest, now)} to "
        f"{age_text(oldest, now)} ago; the stored responses cost ${cost:.6f} when paid for"
    )
    rows = [
        (
            g.teacher,
            g.prompt_version,
            g.status,
            f"{g.entries:,}",
            f"${g.cost_usd:.6f}",
            age_text(g.oldest, now),
            age_text(g.newest, now),
        )
        for g in groups
    ]
    header = ("teacher", "prompt version", "status", "entries", "cost", "oldest", "newest")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _no_filter(args: argparse.Namespace) -> bool:
    return not (args.teacher or args.prompt_version or args.status or args.older_than)


def _prune(engine: Any, where: CacheFilter, args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from db.queries.cache import count_in_flight, count_prunable, count_rationales_referencing, prune

    with Session(engine) as session, session.begin():
        _check_names(session, where)
        in_flight = count_in_flight(session, where)
        rationales = count_rationales_referencing(session, where)
        if args.dry_run:
            pruned = count_prunable(session, where)
            session.rollback()
        else:
            pruned = prune(session, where)
    if args.json:
        print_json(
            {
                "pruned": pruned,
                "dry_run": bool(args.dry_run),
                "rationales_referencing": rationales,
                "in_flight_kept": in_flight,
                "filter": _filter_json(args),
            }
        )
        return 0
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {pruned:,} cached response(s)")
    if rationales:
        print(
            f"  {rationales:,} rationale(s) were made from them: they keep their text, verdict and "
            "cost, but the calls they name are gone from the cache, so making them again pays again"
        )
    if in_flight:
        print(
            f"  {in_flight:,} matching entr{'y is' if in_flight == 1 else 'ies are'} in flight and "
            "kept (a worker is calling, or crashed while calling: its outcome may have been paid)"
        )
    return 0
