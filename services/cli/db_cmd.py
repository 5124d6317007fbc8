"""`kpdd db upgrade` and `kpdd db current`: the schema, owned by Alembic."""

from __future__ import annotations

import argparse

from services.cli.common import print_json, redact_url
from services.config import get_settings
from services.errors import RunFailure


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("db", help="database schema: upgrade, current")
    db_sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="create or migrate the schema to the latest revision")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=run_upgrade)
    cur = db_sub.add_parser("current", help="show the schema revision of the database")
    cur.add_argument("--json", action="store_true", help="print one JSON document")
    cur.set_defaults(handler=run_current)


def run_upgrade(args: argparse.Namespace) -> int:
    # SQLAlchemy and Alembic are imported here, not at the top: `kpdd db --help` need not pay.
    from sqlalchemy.exc import OperationalError

    from db.engine import get_engine
    from db.migrate import current_revision, upgrade

    url = get_settings().resolved_database_url
    try:
        upgrade(url, args.revision)
    except OperationalError as exc:
        raise RunFailure(
            f"cannot migrate {redact_url(url)}: {str(exc.orig).strip().splitlines()[0]}; "
            "check KPDD_DATABASE_URL and that the server is running"
        ) from None
    print(f"database {redact_url(url)} is at revision {current_revision(get_engine(url))}")
    return 0


def run_current(args: argparse.Namespace) -> int:
    from db.engine import get_engine
    from db.migrate import current_revision, head_revision

    url = get_settings().resolved_database_url
    current = current_revision(get_engine(url))
    head = head_revision()
    if args.json:
        print_json({"database": redact_url(url), "current": current, "head": head})
    else:
        state = "up to date" if current == head else "needs `kpdd db upgrade`"
        print(f"{redact_url(url)}: revision {current or 'none'} (head {head}, {state})")
    return 0
