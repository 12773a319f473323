"""`mailctl unsubscribe`: check a signed link, serve the one-click endpoint.

Part of the CLI: parses, calls `mailctl.unsubscribe`, formats. Must not be imported by
anything outside mailctl/cli.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from mailctl.cli import console
from mailctl.cli.context import load_profiles_near, open_store, state
from mailctl.cli.options import CONTEXT, JsonOption
from mailctl.config.profiles import ProfilesFile
from mailctl.errors import UsageError
from mailctl.store.factory import backend_of, resolve_db, sqlite_path
from mailctl.store.urls import redact
from mailctl.unsubscribe.apply import Unsubscriber, unsubscriber_for
from mailctl.unsubscribe.tokens import token_from_url

app = typer.Typer(
    help="Signed unsubscribe links and the one-click (RFC 8058) endpoint.",
    context_settings=CONTEXT,
)


def _profiles() -> ProfilesFile | None:
    """profiles.yaml when one is named or present (and then it must be valid); None without
    one: the key next to the database, scope "all"."""
    named = state.profiles is not None or os.environ.get("MAILCTL_PROFILES")
    if not named and not Path("profiles.yaml").exists():
        return None
    return load_profiles_near(None)


def _unsubscriber() -> Unsubscriber:
    target = resolve_db(state.db)
    if backend_of(target) == "sqlite":  # the key file next to the database
        return unsubscriber_for(_profiles(), str(sqlite_path(target)))
    with open_store() as store:  # a shared server keeps the key itself
        return unsubscriber_for(_profiles(), None, store.database_key)


@app.command("verify")
def unsubscribe_verify(
    url: Annotated[str, typer.Argument(help="An unsubscribe URL (or just its token).")],
    json_output: JsonOption = False,
) -> None:
    """Say what an unsubscribe link means: whose, which campaign and list, valid until when.

    Exits 2 when the link is malformed, tampered with or expired.

    Example: mailctl unsubscribe verify 'https://example.com/unsubscribe?t=…'
    """
    token = token_from_url(url)
    if token is None:
        raise UsageError(f"{url[:80]}: no t= parameter: not a signed unsubscribe link")
    target = _unsubscriber().verify(token, time.time())
    expires = dt.datetime.fromtimestamp(target.expires_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if json_output:
        console.emit_json(
            {
                "valid": True,
                "address": target.address,
                "campaign": target.campaign,
                "list": target.list_name,
                "expires_at": expires,
            }
        )
        return
    console.out.print(
        f"valid: unsubscribes {target.address} (campaign {target.campaign}, list "
        f"{target.list_name}); good until {expires}",
        markup=False,
    )


@app.command("serve")
def unsubscribe_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    rate_limit: Annotated[
        float, typer.Option(help="Requests per minute allowed per client address.", min=1)
    ] = 60,
    burst: Annotated[int, typer.Option(help="Requests a client may send at once.", min=1)] = 20,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="One JSON line per request.")
    ] = True,
) -> None:
    """Serve the unsubscribe endpoint (behind your TLS reverse proxy).

    A POST with List-Unsubscribe=One-Click unsubscribes at once (RFC 8058); a GET only shows
    a confirm page, because link scanners prefetch. /healthz answers for monitoring. Stops
    cleanly on SIGTERM.

    Example: mailctl unsubscribe serve --host 127.0.0.1 --port 8080
    """
    # Starlette and uvicorn load only for the one command that serves, not at every start.
    from mailctl.unsubscribe.web import RateLimit, create_app, serve

    unsubscriber = _unsubscriber()  # config errors now, not at the first request
    where = redact(resolve_db(state.db))
    console.info(f"serving unsubscribes for {where} on http://{host}:{port}/")
    web_app = create_app(
        open_store,
        unsubscriber,
        rate_limit=RateLimit(per_minute=rate_limit, burst=burst),
        access_log=console.log_json_line if access_log else None,
    )
    serve(web_app, host=host, port=port)
