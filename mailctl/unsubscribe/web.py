"""The unsubscribe endpoint: a small ASGI app (Starlette) served by uvicorn.

Why Starlette under uvicorn: the app is five routes and two HTML pages; Starlette gives
routing, form parsing (URL-encoded and multipart, through python-multipart, with size
limits) and lifespan hooks without a framework's weight, and uvicorn is the ASGI server most
operators already run behind nginx, with graceful shutdown on SIGTERM built in. aiohttp
would also do, but brings its own server and client and a second event-loop idiom.

- ``POST <any path>?t=TOKEN`` with ``List-Unsubscribe=One-Click`` (RFC 8058), form-encoded
  or multipart: unsubscribes at once, answers 200, never redirects.
- ``GET <any path>?t=TOKEN``: never changes anything (scanners prefetch links). A page with
  the address masked and a confirm button: a POST carrying a value only this server can
  derive from the token (so another site cannot forge the form), then a confirmation page.
- Bad, tampered or expired tokens: a page that says so and a 4xx; nothing changes.
- ``GET /healthz``: JSON health. Every request: one JSON access-log line on stderr, without
  the token. Requests are rate-limited per client (token bucket).

Store calls run on one worker thread that owns the connection (SQLite connections belong
to one thread; writes are serialised anyway). Imports the unsubscribe domain modules and
the store protocol; the CLI imports this module, nothing else does.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import html
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailctl.store.base import Store
from mailctl.unsubscribe.apply import Unsubscriber
from mailctl.unsubscribe.tokens import TOKEN_PARAM, Problem, TokenError, UnsubscribeToken

__all__ = ["RateLimit", "create_app", "mask_address", "serve"]

T = TypeVar("T")
MAX_BODY = 64 * 1024  # a one-click POST is a few bytes; anything this big is not one

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;"
    "color:#1a1a1a;background:#fff}h1{font-size:1.4rem}"
    "button{font:inherit;padding:.6rem 1.2rem;border:2px solid #1a4fd6;border-radius:6px;"
    "background:#1a4fd6;color:#fff;cursor:pointer}button:focus{outline:3px solid #f5a623;"
    "outline-offset:2px}.muted{color:#555}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# Nothing loads but the inline style; forms post only back here; no framing, no referrer.
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def mask_address(address: str) -> str:
    """``jane.doe@example.com`` -> ``j***e@example.com``: recognisable to its owner only."""
    local, _, domain = address.rpartition("@")
    shown = local[0] + "***" + local[-1] if len(local) > 2 else local[:1] + "***"
    return f"{shown}@{domain}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


_PROBLEM_PAGES = {
    Problem.MALFORMED: (400, "This unsubscribe link is not valid"),
    Problem.TAMPERED: (403, "This unsubscribe link is not valid"),
    Problem.EXPIRED: (410, "This unsubscribe link has expired"),
}


def _problem_page(error: TokenError) -> HTMLResponse:
    status, title = _PROBLEM_PAGES[error.problem]
    body = (
        '<p>Nothing was changed.</p><p class="muted">Use the unsubscribe link in a recent '
        "message, or reply to the message with the word unsubscribe.</p>"
    )
    return _page(title, body, status)


@dataclass
class RateLimit:
    """A token bucket per client: `per_minute` requests, bursts of `burst`."""

    per_minute: float = 60.0
    burst: int = 20
    max_clients: int = 100_000

    def __post_init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float) -> bool:
        rate = self.per_minute / 60.0
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * rate)
        if len(self._buckets) >= self.max_clients and client not in self._buckets:
            # Bounded memory under a flood of client addresses: forget the full buckets.
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        return True


def create_app(
    open_store: Callable[[], Store],
    unsubscriber: Unsubscriber,
    *,
    rate_limit: RateLimit | None = None,
    access_log: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The ASGI app; `open_store` runs on the store thread at startup, `access_log` gets one
    record per request (the CLI writes it as a JSON line on stderr)."""
    limiter = rate_limit or RateLimit()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailctl-store")
    holder: dict[str, Store] = {}

    async def on_store(work: Callable[[Store], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: work(holder["store"]))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        loop = asyncio.get_running_loop()
        holder["store"] = await loop.run_in_executor(executor, open_store)
        try:
            yield
        finally:
            await loop.run_in_executor(executor, holder["store"].close)
            executor.shutdown(wait=True)

    writes = _GroupCommit(unsubscriber, on_store, clock)

    def verified(request: Request, token: str | None) -> UnsubscribeToken:
        if not token:
            raise TokenError("no token", problem=Problem.MALFORMED)
        return unsubscriber.verify(token, clock())

    async def health(request: Request) -> Response:
        location = await on_store(lambda store: (store.list_exists(""), store.location)[1])
        return JSONResponse(
            {"status": "ok", "store": location}, headers={"Cache-Control": "no-store"}
        )

    async def page(request: Request) -> Response:
        token = request.query_params.get(TOKEN_PARAM)
        try:
            target = verified(request, token)
        except TokenError as exc:
            request.state.outcome = exc.problem.value
            return _problem_page(exc)
        assert token is not None
        masked = html.escape(mask_address(target.address))
        if await on_store(lambda store: unsubscriber.already(store, target)):
            request.state.outcome = "already"
            return _page(
                "You are unsubscribed",
                f"<p><strong>{masked}</strong> already gets no more of these messages.</p>",
            )
        request.state.outcome = "shown"
        check = html.escape(unsubscriber.form_check(token))
        body = (
            f"<p>Stop sending <strong>{masked}</strong> messages from "
            f"<strong>{html.escape(target.list_name)}</strong>?</p>"
            f'<form method="post"><input type="hidden" name="confirm" value="{check}">'
            '<button type="submit" id="confirm">Unsubscribe</button></form>'
            '<p class="muted">Nothing changes until you press the button.</p>'
        )
        return _page("Unsubscribe", body)

    async def post(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            request.state.outcome = "too_large"
            return PlainTextResponse("request too large\n", status_code=413)
        try:
            form = await request.form(max_files=0, max_fields=20, max_part_size=4096)
        except Exception:  # noqa: BLE001 - any unreadable body is the client's error
            request.state.outcome = "bad_form"
            return PlainTextResponse("unreadable form\n", status_code=400)
        token = request.query_params.get(TOKEN_PARAM) or _field(form.get(TOKEN_PARAM))
        try:
            target = verified(request, token)
        except TokenError as exc:
            request.state.outcome = exc.problem.value
            return _problem_page(exc)
        assert token is not None
        one_click = _field(form.get("List-Unsubscribe")) == "One-Click"
        confirmed = _field(form.get("confirm")) == unsubscriber.form_check(token)
        if not one_click and not confirmed:
            request.state.outcome = "unconfirmed"
            return _page(
                "Please confirm",
                "<p>Nothing was changed. Open the link from your message again and press "
                "the button.</p>",
                400,
            )
        source = "one-click" if one_click else "web-confirm"
        new = await writes.submit(target, f"{source}:{target.campaign}")
        request.state.outcome = "unsubscribed" if new else "already"
        if one_click:
            return PlainTextResponse("unsubscribed\n", headers={"Cache-Control": "no-store"})
        masked = html.escape(mask_address(target.address))
        return _page(
            "You are unsubscribed",
            f'<p id="done"><strong>{masked}</strong> will get no more of these messages.</p>',
        )

    async def logged(
        request: Request, handler: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        client = request.client.host if request.client else "-"
        if request.url.path != "/healthz" and not limiter.allow(client, time.monotonic()):
            response: Response = PlainTextResponse(
                "too many requests\n", status_code=429, headers={"Retry-After": "60"}
            )
            request.state.outcome = "rate_limited"
        else:
            response = await handler(request)
        if access_log is not None:
            access_log(
                {
                    "time": round(time.time(), 3),
                    "client": client,
                    "method": request.method,
                    "path": request.url.path,  # never the query: it holds the token
                    "status": response.status_code,
                    "outcome": getattr(request.state, "outcome", None),
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                }
            )
        return response

    async def dispatch(request: Request) -> Response:
        return await logged(request, post if request.method == "POST" else page)

    async def health_logged(request: Request) -> Response:
        return await logged(request, health)

    app = Starlette(
        routes=[
            Route("/healthz", health_logged, methods=["GET"]),
            Route("/{path:path}", dispatch, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )
    return app


class _GroupCommit:
    """Unsubscribes that arrive while the store thread is busy are written together, in one
    transaction: a burst of one-click POSTs costs one commit, not one each."""

    def __init__(
        self,
        unsubscriber: Unsubscriber,
        on_store: Callable[[Callable[[Store], Any]], Awaitable[Any]],
        clock: Callable[[], float],
    ) -> None:
        self._unsubscriber = unsubscriber
        self._on_store = on_store
        self._clock = clock
        self._pending: list[tuple[UnsubscribeToken, str, asyncio.Future[bool]]] = []
        self._flushing = False

    async def submit(self, token: UnsubscribeToken, source: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((token, source, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    def _apply(
        self, store: Store, *, requests: list[tuple[UnsubscribeToken, str]], now: float
    ) -> list[bool]:
        return self._unsubscriber.apply_many(store, requests, now=now)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:500], self._pending[500:]
                requests = [(token, source) for token, source, _ in batch]
                now = self._clock()
                try:
                    results = await self._on_store(
                        functools.partial(self._apply, requests=requests, now=now)
                    )
                except Exception as exc:  # noqa: BLE001 - every waiting request learns of it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._flushing = False


def _field(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def serve(app: Starlette, *, host: str, port: int) -> None:
    """Run under uvicorn until SIGINT/SIGTERM; in-flight requests finish first."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # uvicorn's line carries the query string, hence the token
        log_level="warning",
        proxy_headers=True,  # the client address from X-Forwarded-For set by a local proxy
        forwarded_allow_ips="127.0.0.1,::1",
        timeout_graceful_shutdown=10,
        server_header=False,
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # SIGTERM is how systemd and docker stop a service: after the graceful shutdown
            # exit 0 instead of re-raising it (uvicorn's default, a "killed" status).
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    _Server(config).run()
