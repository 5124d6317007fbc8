"""`kpdd serve`: the HTTP API (and `/metrics`) with uvicorn. See README, "Run it as a service"."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API, the dashboard and /metrics")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="info", help="uvicorn log level: debug, info, warning, error")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from services.cli.common import database_engine
    from services.config import get_settings
    from services.errors import BadInputError

    if not 0 < args.port < 65536:
        raise BadInputError(f"--port: {args.port} is not a TCP port (1-65535)")
    if args.workers < 1:
        raise BadInputError("--workers: must be at least 1")
    settings = get_settings()
    database_engine(settings)  # a clear one-line error now if the database is unreachable or old
    uvicorn.run(
        "services.api.asgi:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=True,
    )
    return 0
