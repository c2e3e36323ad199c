"""The ASGI application: ``uvicorn cds_hooks.app:app`` serves the shipped rules.

Wiring only: settings, start-up loading (a bad rule pack stops the start), error mapping,
CORS for browser sandboxes, and a Server-Timing header with the server-side time.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from cds_hooks.fhir_read import MalformedResource
from cds_hooks.pipeline import BadRequest
from cds_hooks.prefetch import DataUnavailable, WrongPatient
from cds_hooks.routes import UnknownService, router
from cds_hooks.runtime import load_runtime
from cds_hooks.settings import Settings

_STATUS = {BadRequest: 400, MalformedResource: 400, WrongPatient: 400, UnknownService: 404, DataUnavailable: 412}


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.runtime = load_runtime(settings or Settings())
        yield
        app.state.runtime.close()

    app = FastAPI(title="Neuropathic pain CDS Hooks service", lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(ServerTiming)
    for error, status in _STATUS.items():
        app.add_exception_handler(error, _error_response(status))
    return app


def _error_response(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status)
    return handler


class ServerTiming:
    """Adds ``Server-Timing: app;dur=<ms>``: time from request arrival to response start."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def timed_send(message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                message.setdefault("headers", []).append((b"server-timing", f"app;dur={elapsed_ms:.3f}".encode()))
            await send(message)

        await self.app(scope, receive, timed_send)


app = create_app()
