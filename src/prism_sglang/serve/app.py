"""The FastAPI application: routes, error mapping, the request-body limit and the engine worker's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prism_sglang import __version__
from prism_sglang.engine import SpeculativeEngine
from prism_sglang.serve import native_api, openai_api
from prism_sglang.serve.errors import ServeError, install_error_handlers
from prism_sglang.serve.options import ServerConfig
from prism_sglang.serve.service import Service


class JsonBody:
    """Answer 413 to a request body over `max_bytes` before anything parses it, and read every body as JSON.

    The body is read here (it is small by construction) and replayed to the app; after it, `receive` is the
    server's own again, so the streaming responses still hear about client disconnects. Every POST endpoint
    takes JSON, so a missing or other Content-Type (`curl -d` sends a form type) is read as JSON too, as SGLang
    users expect, instead of failing with a confusing "not a dictionary" error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        body = b"".join(chunks)
        replayed = False
        if body:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ServeError(413, f"the request body is larger than this server's limit ({self.max_bytes} bytes)",
                           code="request_too_large")
        await error.response()(scope, receive, send)


def create_app(engine: SpeculativeEngine, config: ServerConfig) -> FastAPI:
    service = Service(engine, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.scheduler.start()
        yield
        service.scheduler.stop()  # aborts whatever the graceful-shutdown window did not let finish

    app = FastAPI(title="prism-sglang CPU server", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible and SGLang-native API over the PRISM reference engine.")
    app.state.service = service
    install_error_handlers(app, service.metrics.refused)
    app.include_router(openai_api.router)
    app.include_router(native_api.router)
    app.add_middleware(JsonBody, max_bytes=config.max_request_bytes)
    return app
