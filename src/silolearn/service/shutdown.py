"""Graceful shutdown of ``silolearn serve``: drain, then stop.

On the first SIGTERM (or Ctrl-C) the service drains. ``/readyz`` answers 503, so that a
load balancer stops sending; a request that arrives is refused at once with
``ServiceUnavailable`` (503, its JSON body, ``Retry-After`` and ``Connection: close``):
nothing of it was taken, it may be sent again. Requests already in flight run to their end
(a predict waiting in the micro-batcher, feedback, ingest) and are answered with
``Connection: close``. Rounds running in the background are waited for, up to ``[service]
round_grace_seconds``, while the server still answers; no queued round starts. Then the
server closes its listener and connections, the service stops (``Running.stop``: the
micro-batcher drained, the audit head signed) and the process exits 0.

A round still running when the grace ends is marked ``interrupted`` and cut short with the
process, as a crash would cut it: its version, if it made one, never served, and the
tenant's next round marks its training run abandoned (I8). A second signal stops at once
(uvicorn still answers what is in flight, and the process ends by that signal).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from silolearn.errors import ServiceUnavailable
from silolearn.service.responses import error_response
from silolearn.service.state import Drain

if TYPE_CHECKING:
    from silolearn.service.app import Running

_log = logging.getLogger("silolearn.service")

ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz"})
"""Paths answered while draining: the process is up, and not ready."""
RETRY_AFTER_SECONDS = 5


class DrainRequests:
    """ASGI middleware: counts the requests in flight, refuses new ones while draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = getattr(scope["app"].state, "service", None) if "app" in scope else None
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED or service is None:
            await self.app(scope, receive, send)
            return
        drain: Drain = service.drain
        if not drain.enter():
            refusal = error_response(
                ServiceUnavailable(
                    "the service is stopping: this request was not taken, send it again",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            )
            refusal.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            refusal.headers["Connection"] = "close"
            await refusal(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            # once draining, the client opens a new connection for its next request
            if message["type"] == "http.response.start" and drain.draining:
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_closing)
        finally:
            drain.leave()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT drains the service before stopping
    it (see the module); the process then exits 0, not by the signal."""

    def __init__(self, config: uvicorn.Config, running: Running) -> None:
        super().__init__(config)
        self._running = running
        self._signalled = False
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._running.service.drain.start()  # takes no lock: this is a signal handler
        _log.info("%s: draining", signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        if self._signalled and not self.should_exit:
            if not self._draining:
                self._draining = True
                await asyncio.to_thread(self._running.begin_drain)
            if self._running.drained():
                self.should_exit = True
        return await super().on_tick(counter)
