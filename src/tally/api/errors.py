"""One error shape for every refusal: `{"detail": [{"loc", "msg", "type"}]}`.

That is FastAPI's validation-error shape, used for 401, 403, 404, 409, 413,
415 and 503 too, so a client parses errors one way. `loc` names where the
problem is (`["body", "aggregationProperty"]`, `["query", "after"]`,
`["header", "Authorization"]`, `["path", "idOrUid"]`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tally.api.auth import AuthError
from tally.contracts.metric import FieldError
from tally.telemetry.logs import Log

log = Log("tally.api")

JSON = "application/json"
Loc = list[str | int]


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detail: list[ErrorItem]


def item(loc: Sequence[str | int], msg: str, type: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": type}


class ApiError(Exception):
    """A refusal with its status; raised anywhere under a route."""

    def __init__(
        self,
        status: int,
        items: Iterable[dict[str, Any]],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.items = list(items)
        self.headers = headers or {}
        super().__init__("; ".join(f"{i['loc']}: {i['msg']}" for i in self.items))

    @classmethod
    def one(cls, status: int, loc: Sequence[str | int], msg: str, type: str) -> ApiError:
        return cls(status, [item(loc, msg, type)])


def _loc_of(field: str) -> Loc:
    """`propertyFilters.plan.0` -> ["propertyFilters", "plan", 0] (digits are list indices)."""
    if field in ("(definition)", ""):
        return []
    return [int(part) if part.isdigit() else part for part in field.split(".")]


def field_errors(errors: Iterable[FieldError], prefix: Sequence[str | int] = ("body",)) -> ApiError:
    """422 from the contract's field errors, keeping their field names in `loc`."""
    return ApiError(422, [item([*prefix, *_loc_of(e.field)], e.reason, e.type) for e in errors])


def body_errors(exc: ValidationError) -> ApiError:
    """422 from a body model's validation errors, each `loc` under "body"."""
    return ApiError(
        422, [item(["body", *e["loc"]], e["msg"], e["type"]) for e in exc.errors(include_url=False)]
    )


def error_response(
    status: int, items: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps({"detail": items}), status, headers=headers, media_type=JSON)


def _validation_items(exc: RequestValidationError) -> list[dict[str, Any]]:
    items = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid"))
        items.append(
            item(
                [p for p in error.get("loc", ()) if isinstance(p, str | int)],
                message,
                str(error.get("type", "value_error")),
            )
        )
    return items


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.items, exc.headers)


async def _auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    kind = "forbidden" if exc.status == 403 else "unauthorized"
    return error_response(
        exc.status,
        [item(["header", "Authorization"], exc.message, kind)],
        {"WWW-Authenticate": exc.challenge()},
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _validation_items(exc))


def _allowed_methods(request: Request) -> str:
    """Every method the path has: Starlette's 405 names only one route's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(
        exc.status_code, [item([], str(exc.detail), f"http_{exc.status_code}")], headers
    )


async def _database_down(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ValueError):
        # asyncpg's client-side DataError is an InterfaceError too: a value it
        # cannot send. Retrying cannot help, so it is ours to fix: a 500.
        return await _internal(request, exc)
    log.warning("database unavailable", reason=f"{type(exc).__name__}: {exc}")
    return error_response(
        503,
        [item([], "the database is unavailable; retry later", "database_unavailable")],
        {"Retry-After": "1"},
    )


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("request failed", exc=True, method=request.method, path=request.url.path)
    return error_response(500, [item([], "internal error; see the server's log", "internal")])


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # OSError covers TimeoutError; OperatorInterventionError covers a server
    # shutting down or restarting (AdminShutdownError, CannotConnectNowError).
    for unavailable in (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.OperatorInterventionError,
        asyncpg.InterfaceError,
    ):
        app.add_exception_handler(unavailable, _database_down)
    app.add_exception_handler(Exception, _internal)


_TITLES = {
    401: "No token, or not a valid one",
    403: "The token's scope does not allow this",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Invalid request",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of an operation, for its decorator."""
    return {status: {"model": ErrorBody, "description": _TITLES[status]} for status in statuses}
