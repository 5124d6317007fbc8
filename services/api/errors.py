"""One JSON shape for every error the API returns, with the status code that fits.

    {"error": {"status": 404, "kind": "not_found", "message": "no generation job 7; list jobs ..."}}

`kind` is stable (clients branch on it); `message` says what to fix. Service errors map once:
`BadInputError` -> 400, `ConfigError` -> 409 (the server is not set up for this request),
`RunFailure` -> 503; `ApiError` carries its own status (401, 403, 404, 409, 413, 422).
Request bodies that fail validation -> 422, naming each field. Nothing else leaks: an unexpected
exception is logged with its traceback and answered 500 without details.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import BadInputError, ConfigError, KpddError, RunFailure

log = logging.getLogger(__name__)

KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or KINDS.get(status, "error")


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def error_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    return {"error": {"status": status, "kind": kind or KINDS.get(status, "error"), "message": message}}


def _respond(
    status: int, message: str, kind: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _respond(exc.status, exc.message, exc.kind, headers)

    @app.exception_handler(KpddError)
    async def _service(_: Request, exc: KpddError) -> JSONResponse:
        if isinstance(exc, BadInputError):
            return _respond(400, str(exc))
        if isinstance(exc, ConfigError):
            return _respond(409, str(exc))
        if isinstance(exc, RunFailure):
            return _respond(503, str(exc))
        return _respond(500, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        return _respond(422, "; ".join(problems) or "the request is invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.detail else KINDS.get(exc.status_code, "error")
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = "no such endpoint; see /openapi.json"
        return _respond(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _respond(500, "internal error; the server log has the details")
