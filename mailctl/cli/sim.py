"""`mailctl sim`: a simulated mailbox provider on this machine, for rehearsal.

Part of the CLI: parses, runs `mailctl.sim`, prints its events. Must not be imported by
anything outside mailctl/cli.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mailctl.cli import console
from mailctl.cli.options import CONTEXT, JsonOption
from mailctl.errors import UsageError

if TYPE_CHECKING:
    from mailctl.sim.events import IpStats, SimEvent

app = typer.Typer(context_settings=CONTEXT)


@app.command("sim")
def sim(
    provider: Annotated[
        str,
        typer.Option(
            help="Behave like google, microsoft, yahoo, generic, sandbox, or reputation (a "
            "receiver that judges each sending IP by its reputation)."
        ),
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
    new_ip_rate: Annotated[
        float | None,
        typer.Option(
            help="reputation: recipients a new IP may send per minute before it is throttled "
            "[default: 60].",
            min=1,
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="reputation: seed of the spam-placement draws (reproducible).")
    ] = 0,
    json_output: JsonOption = False,
) -> None:
    """Run a simulated mailbox provider on this machine, for rehearsal.

    It answers like the real provider: its throttle replies once a source IP sends too
    fast, 550 5.1.1 for local parts starting with `unknown`, greylisting and more (see
    mailctl/sim/). Point a profile at it with mx_override. Stop with Ctrl-C.

    STARTTLS is offered by default, so limits that require TLS (Google's) are met as with
    the real provider.

    --provider reputation keeps a reputation score (0-100) per sending IP. A new IP starts
    at 50 and may send --new-ip-rate recipients a minute (x2 per 25 points more, /2 per 25
    less); past that it answers 451 4.7.1 "Received too many messages from a new or
    untrusted IP". Each such throttle reply costs 0.5 points, each hard bounce (local parts
    starting with `unknown`) while bounces exceed 2% of the last 500 recipients costs 2;
    clean mail earns 1 point per --new-ip-rate accepted recipients. Accepted mail lands in
    the inbox from 35, in spam below 20 (in between, in spam with a growing probability,
    drawn from --seed), and below 5 every recipient is refused with Microsoft's block-list
    reply (S3150).

    When stopped it prints what each sending IP got: inbox, spam, throttled, blocked,
    bounced, other refusals and its reputation (a table, or JSON with --json).

    \b
    Examples:
      mailctl sim --provider google --port 2525 --mbox bounces.mbox
      mailctl sim --provider reputation --new-ip-rate 120 --json
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
    behaviour = preset(provider)
    if behaviour.reputation is not None:
        model = replace(behaviour.reputation, seed=seed)
        if new_ip_rate is not None:
            model = replace(model, new_ip_rate=new_ip_rate, window=60.0)
        behaviour = behaviour.with_changes(reputation=model)
    elif new_ip_rate is not None:
        raise UsageError("--new-ip-rate: only --provider reputation keeps a reputation")
    config = SimConfig(
        behaviour=behaviour,
        host=host,
        port=port,
        mbox=mbox,
        maildir=maildir,
        jsonl=log,
        tls=tls_mode,
    )

    if behaviour.reputation is not None:
        console.info(f"sim[{provider}] {behaviour.reputation.describe()}")

    def on_event(event: SimEvent) -> None:
        console.event(f"sim[{provider}] {event.kind}: {event.message}", kind=event.kind)

    def on_stop(stats: dict[str, IpStats]) -> None:
        if json_output:
            console.emit_json(
                {"provider": behaviour.name, "ips": {ip: s.as_dict() for ip, s in stats.items()}}
            )
        elif stats:
            console.out.print(_stats_table(stats))

    try:
        run_forever(config, on_event=on_event, on_stop=on_stop)
    except KeyboardInterrupt:
        console.info("sim stopped")


def _stats_table(stats: dict[str, IpStats]) -> Table:
    table = Table("sending IP", "inbox", "spam", "throttled", "blocked", "bounced", "other")
    table.add_column("reputation")
    for ip, entry in stats.items():
        reputation = "" if entry.reputation is None else f"{entry.reputation:.1f}"
        counts = (entry.inbox, entry.spam, entry.throttled, entry.blocked, entry.bounced)
        table.add_row(ip, *(str(n) for n in counts), str(entry.other), reputation)
    return table
