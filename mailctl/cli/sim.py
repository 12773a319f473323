"""`mailctl sim`: a simulated mailbox provider on this machine, for rehearsal.

Part of the CLI: parses, runs `mailctl.sim`, prints its events. Must not be imported by
anything outside mailctl/cli.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mailctl.cli import console
from mailctl.cli.options import CONTEXT
from mailctl.errors import UsageError

if TYPE_CHECKING:
    from mailctl.sim.events import SimEvent

app = typer.Typer(context_settings=CONTEXT)


@app.command("sim")
def sim(
    provider: Annotated[
        str, typer.Option(help="Behave like google, microsoft, yahoo, generic or sandbox.")
    ] = "generic",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 2525,
    mbox: Annotated[
        Path | None, typer.Option(help="Append DSNs for asynchronous bounces to this mbox.")
    ] = None,
    maildir: Annotated[Path | None, typer.Option(help="Store accepted messages here.")] = None,
    log: Annotated[
        Path | None, typer.Option(help="Append one JSON line per accepted recipient.")
    ] = None,
    tls: Annotated[
        str,
        typer.Option(
            help="STARTTLS: offer (a throwaway certificate, made at start and never left on "
            "disk), require, or off."
        ),
    ] = "offer",
) -> None:
    """Run a simulated mailbox provider on this machine, for rehearsal.

    It answers like the real provider: its throttle replies once a source IP sends too
    fast, 550 5.1.1 for local parts starting with `unknown`, greylisting and more (see
    mailctl/sim/). Point a profile at it with mx_override. Stop with Ctrl-C.

    STARTTLS is offered by default, so limits that require TLS (Google's) are met as with
    the real provider.

    Example: mailctl sim --provider google --port 2525 --mbox bounces.mbox
    """
    # Imported here, not at the top: the simulator (aiosmtpd and 1,400 lines of provider
    # behaviour) is heavy, and only this rarely used rehearsal command needs it.
    from mailctl.sim.behaviours import SimConfig, SimTls, preset
    from mailctl.sim.servers import run_forever

    try:
        tls_mode = SimTls(tls.lower())
    except ValueError:
        valid = ", ".join(m.value for m in SimTls)
        raise UsageError(f"--tls: '{tls}' is not one of {valid}") from None
    config = SimConfig(
        behaviour=preset(provider),
        host=host,
        port=port,
        mbox=mbox,
        maildir=maildir,
        jsonl=log,
        tls=tls_mode,
    )

    def on_event(event: SimEvent) -> None:
        console.event(f"sim[{provider}] {event.kind}: {event.message}", kind=event.kind)

    try:
        run_forever(config, on_event=on_event)
    except KeyboardInterrupt:
        console.info("sim stopped")
