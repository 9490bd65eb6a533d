"""OpenAI-style errors: every failure answers `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("prism_sglang.serve")

RETRY_AFTER_SECONDS = 1


class ServeError(Exception):
    """An error answered to the client; `status` is the HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after = retry_after
        self.counted = False  # already in the request metrics (set where a job's outcome is recorded)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> ServeError:
    return ServeError(400, message, param=param, code=code)


def overloaded() -> ServeError:
    return ServeError(429, "the server is at capacity (running and queued requests); retry later",
                      "server_overloaded", code="queue_full", retry_after=RETRY_AFTER_SECONDS)


def shutting_down() -> ServeError:
    return ServeError(503, "the server is shutting down", "service_unavailable", code="shutting_down",
                      retry_after=RETRY_AFTER_SECONDS)


def timed_out(seconds: float) -> ServeError:
    return ServeError(504, f"the request did not finish within the server's request timeout ({seconds:g} s)",
                      "timeout_error", code="request_timeout")


def internal_error(exc: BaseException) -> ServeError:
    return ServeError(500, f"internal error while generating: {type(exc).__name__}: {exc}", "server_error",
                      code="internal_error")


def _field_path(loc: tuple) -> str:
    """`messages.0.role` from pydantic's location, without the "body" root and union member tags (`str`, ...)."""
    return ".".join(str(p) for p in loc[1:] if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p)))


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _validation_error(exc: RequestValidationError) -> ServeError:
    errors = exc.errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request("the request body is not valid JSON", code="invalid_json")
    where = _field_path(tuple(first.get("loc", ())))
    if not where and first.get("type") in ("model_attributes_type", "dict_type"):
        return bad_request("the request body must be a JSON object", code="invalid_json")
    # A union (e.g. prompt: string or token ids) reports one error per member: say them all.
    messages = dict.fromkeys(str(e.get("msg")) for e in errors if _field_path(tuple(e.get("loc", ()))) == where)
    message = " or ".join(messages)
    code = "missing_field" if first.get("type") == "missing" else "invalid_value"
    return bad_request(f"{where}: {message}" if where else message, param=where or None, code=code)


def install_error_handlers(app: FastAPI, count: Callable[[str, int], None]) -> None:
    """Map validation errors to 400 (OpenAI answers 400, not FastAPI's 422) and anything unexpected to 500.
    `count(path, status)` records a request refused before it reached the engine."""

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        count(request.url.path, error.status)
        return error.response()

    @app.exception_handler(ServeError)
    async def _on_serve_error(request: Request, exc: ServeError) -> JSONResponse:
        if not exc.counted:
            count(request.url.path, exc.status)
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ServeError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return internal_error(exc).response()
