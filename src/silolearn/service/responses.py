"""Errors as JSON, and the request body limit (I10).

Every error the API answers has the body ``{"error": code, "message": ..., "details": {...}}``:
a typed error of ``silolearn.errors`` with its HTTP status; a request that does not validate
(malformed JSON, an unknown field, a wrong type) is ``InvalidInput``, 422, naming the fields
and rules but never echoing the input; a body over ``[service] max_body_bytes`` is
``PayloadTooLarge``, 413, refused before it is parsed; anything unexpected is a 500 with the
same shape and nothing of its cause (which goes to the server's log).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from silolearn.errors import InvalidInput, PayloadTooLarge, RateLimited, SiloError, Unauthenticated

_log = logging.getLogger("silolearn.service")

_HTTP_CODES = {404: "NotFoundError", 405: "MethodNotAllowed", 406: "NotAcceptable"}


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details}


def error_response(exc: SiloError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.details.get("retry_after", 1))
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors()[:50]:
        loc = [str(p)[:64] for p in err.get("loc", ())]
        kind = str(err.get("type", ""))
        message = str(err.get("msg", ""))
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "json_invalid":
            message = "the body is not valid JSON"
        out.append({"loc": loc, "type": kind, "message": message[:200]})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SiloError)
    async def silo_error(request: Request, exc: SiloError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "message": "invalid request"}
        where = ".".join(first["loc"]) or "request"
        return error_response(InvalidInput(f"{where}: {first['message']}", errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "HTTPError")
        return JSONResponse(
            error_body(code, str(exc.detail)[:300]),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("InternalError", "internal error: see the server's log"),
            status_code=500,
        )


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with a 413 JSON error, by its declared
    length or, when it streams, as soon as it grows past the limit; a body within it is
    read once and handed on whole."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_error(send, 400, InvalidInput("Content-Length is not a number"))
                return
            if length > self.max_bytes:
                await _send_error(send, 413, self._too_large())
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, 413, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is over the limit of {self.max_bytes} bytes",
            max_bytes=self.max_bytes,
        )


async def _send_error(send: Send, status: int, exc: SiloError) -> None:
    body = json.dumps(exc.to_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
