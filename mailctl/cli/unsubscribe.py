"""`mailctl unsubscribe`: check a signed link, serve the one-click endpoint.

A command group module: parses, calls mailctl.unsubscribe, formats. Registered by
mailctl.cli; imports the shared state and helpers from it.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mailctl.cli import console

unsubscribe_app = typer.Typer(
    help="Signed unsubscribe links and the one-click (RFC 8058) endpoint.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _profiles_or_none() -> Any:
    from mailctl import cli

    if cli.state.profiles is None and not os.environ.get("MAILCTL_PROFILES"):
        if not Path("profiles.yaml").exists():
            return None  # defaults: the key next to the database, scope "all"
    return cli._load_profiles(None)


def _unsubscriber() -> Any:
    from mailctl import cli
    from mailctl.store.sqlite import resolve_db_path
    from mailctl.unsubscribe.apply import unsubscriber_for

    return unsubscriber_for(_profiles_or_none(), str(resolve_db_path(cli.state.db)))


@unsubscribe_app.command("verify")
def unsubscribe_verify(
    url: Annotated[str, typer.Argument(help="An unsubscribe URL (or just its token).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say what an unsubscribe link means: whose, which campaign and list, valid until when.

    Exits 2 when the link is malformed, tampered with or expired.

    Example: mailctl unsubscribe verify 'https://example.com/unsubscribe?t=…'
    """
    from mailctl.errors import UsageError
    from mailctl.unsubscribe.tokens import token_from_url

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


@unsubscribe_app.command("serve")
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
    from mailctl import cli
    from mailctl.unsubscribe.web import RateLimit, create_app, serve

    unsubscriber = _unsubscriber()  # config errors now, not at the first request
    from mailctl.store.sqlite import resolve_db_path

    console.info(
        f"serving unsubscribes for {resolve_db_path(cli.state.db)} on http://{host}:{port}/"
    )
    app = create_app(
        cli._open_store,
        unsubscriber,
        rate_limit=RateLimit(per_minute=rate_limit, burst=burst),
        access_log=console.log_json_line if access_log else None,
    )
    serve(app, host=host, port=port)
