"""`create_app(settings)`: the FastAPI application behind `kpdd serve`.

Routes live in `services.api.routes_*` (corpora, jobs, snapshots, runs); this module wires them,
the error shape (`errors`), authentication and pagination.

Authentication: mutating requests need `Authorization: Bearer <KPDD_API_TOKEN>`, compared in
constant time (`hmac.compare_digest`). With no token configured they are refused (403): the API
fails closed. Reads need the token too unless `KPDD_API_OPEN_READS=true`.

The API process only records and queues: generation chunks and training runs go to the Celery
queues (`kpdd worker`, `kpdd worker --queues training`), never run inside it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from sqlalchemy import Engine

from services.api import errors
from services.api.errors import ApiError
from services.config import Settings, get_settings

MAX_PAGE = 500


@dataclass(slots=True, frozen=True)
class Page:
    limit: int
    offset: int

    def wrap(self, items: list[Any], total: int) -> dict[str, Any]:
        nxt = self.offset + len(items)
        return {
            "items": items,
            "total": total,
            "limit": self.limit,
            "offset": self.offset,
            "next_offset": nxt if nxt < total else None,
        }


def page(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")] = 50,
    offset: Annotated[int, Query(ge=0, description="items to skip")] = 0,
) -> Page:
    return Page(limit, offset)


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _token_ok(request: Request, settings: Settings) -> bool:
    expected = settings.api_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not expected or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def require_write(request: Request) -> None:
    settings = settings_of(request)
    if not settings.api_token:
        raise ApiError(403, "this server has no KPDD_API_TOKEN: set one to allow changes through the API")
    if not _token_ok(request, settings):
        raise ApiError(401, "send the API token: Authorization: Bearer <KPDD_API_TOKEN>")


def require_read(request: Request) -> None:
    settings = settings_of(request)
    if settings.api_open_reads:
        return
    if not settings.api_token:
        raise ApiError(
            403, "reads are closed and no KPDD_API_TOKEN is set: set one, or KPDD_API_OPEN_READS=true"
        )
    if not _token_ok(request, settings):
        raise ApiError(401, "send the API token (Authorization: Bearer ...) or set KPDD_API_OPEN_READS=true")


Read = Depends(require_read)
Write = Depends(require_write)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    from fastapi.staticfiles import StaticFiles

    from services.api import routes_corpora, routes_dashboard, routes_jobs, routes_runs, routes_snapshots
    from services.cli.common import database_engine

    settings = settings or get_settings()
    app = FastAPI(
        title="kpdd",
        summary="Key-point-driven distillation of math reasoning: corpora, generation jobs, snapshots, "
        "training runs.",
        version="1",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.engine = engine or database_engine(settings)
    errors.install(app)

    @app.get("/api/health", tags=["service"])
    def health(request: Request) -> dict[str, Any]:
        from sqlalchemy import text

        with engine_of(request).connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "broker": bool(settings_of(request).broker_url)}

    for module in (routes_corpora, routes_jobs, routes_snapshots, routes_runs):
        app.include_router(module.router, prefix="/api")
    app.include_router(routes_dashboard.router)
    app.mount("/static", StaticFiles(directory=routes_dashboard.STATIC), name="static")

    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from services.api.metrics import DatabaseCollector

    registry = CollectorRegistry()
    registry.register(DatabaseCollector(app.state.engine, settings.broker_url))

    @app.get("/metrics", tags=["service"], dependencies=[Read], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
