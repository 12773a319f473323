"""`mailctl bounces`: read bounce and complaint mailboxes into the suppression list.

Part of the CLI: parses, calls `mailctl.bounces`, formats. Must not be imported by anything
outside mailctl/cli.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailctl.bounces.mailbox import iter_messages
from mailctl.bounces.parse import parse_message
from mailctl.bounces.remote import RemoteOptions
from mailctl.bounces.suppression import EvidencePolicy, SoftBouncePolicy, import_reports
from mailctl.cli import console, displays
from mailctl.cli.context import load_profiles_near, open_store, optional_profiles, state
from mailctl.cli.options import (
    CONTEXT,
    JsonPerMessageOption,
    JsonSummaryOption,
    MailboxPaths,
    QuietOption,
)
from mailctl.config.profiles import BounceSettings
from mailctl.errors import BounceParseError, MailctlError, UsageError
from mailctl.message.tracking import tracking_keys
from mailctl.unsubscribe.apply import optional_unsubscriber

app = typer.Typer(
    help="Read bounce and complaint mailboxes (mbox, Maildir, .eml).", context_settings=CONTEXT
)


@app.command("import")
def bounces_import(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="mbox files, Maildir folders, .eml files, - for stdin, or mailbox URLs: "
            "imaps://user@host[:port]/FOLDER, imap://… (STARTTLS), pop3s://user@host[:port], "
            "pop3://… (STLS)."
        ),
    ],
    password_env: Annotated[
        str | None,
        typer.Option(help="Environment variable that holds the mailbox password (URLs)."),
    ] = None,
    move_to: Annotated[
        str | None,
        typer.Option(help="IMAP: move imported messages to this folder (created if missing)."),
    ] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete imported messages from the server.")
    ] = False,
    ca_file: Annotated[
        Path | None, typer.Option(help="Trust this CA (PEM) for the server's certificate.")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Do not verify the server's TLS certificate (unsafe)."),
    ] = False,
    errors: Annotated[
        Path | None,
        typer.Option(
            help="Append messages that could not be parsed, reports tied to no message "
            "mailctl sent, and unsure reports (read by the generic path only), to this mbox."
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="Use this profile's bounces settings [default: the default profile]."),
    ] = None,
    soft_limit: Annotated[
        int, typer.Option(help="Suppress after this many soft bounces on distinct days.", min=1)
    ] = 3,
    soft_window: Annotated[int, typer.Option(help="...within this many days.", min=1)] = 30,
    json_output: JsonSummaryOption = False,
    quiet: QuietOption = False,
) -> None:
    """Import bounces and complaints into the suppression list.

    Hard bounces (unknown user or domain) and complaints suppress the address at once;
    soft bounces suppress it (for a while) only after repeated failures on distinct days;
    delays and auto-replies never do. Failures that are the sender's fault (blocklists,
    authentication, policy, content) never suppress anyone. Each report is tied to the
    message it is about (signed VERP token or tracking id, Message-ID, or a recent send to
    the address); a report tied to none is recorded and counted but suppresses no one, unless
    the profile says `bounces: {trust_unmatched: true}`. Unsubscribe mail (mailto requests,
    ARF opt-outs, Apple Mail's one-click) unsubscribes only a valid token's address, a signed
    tracking id's recipient, or its own sender when mailctl mailed them recently. Importing
    the same mailbox twice changes nothing.

    Mailboxes on a server are fetched in batches; a re-run fetches only new mail (IMAP
    UIDVALIDITY/UID mark, POP3 UIDL, committed with each batch), and an interrupted run
    resumes where it stopped.

    Example: mailctl bounces import /var/mail/bounces --errors unmatched.mbox --json

    Example: mailctl bounces import imaps://bounces@mail.example.com/INBOX --password-env
    BOUNCE_PASSWORD --move-to Processed
    """
    console.set_quiet(quiet or json_output)
    # Without profiles.yaml: no trusted mailbox, the key file's tracking key only.
    explicit = profile is not None or state.profiles is not None
    profiles = load_profiles_near(None) if explicit else optional_profiles()
    settings = BounceSettings()
    if profiles is not None:
        chosen = profiles.profiles.get(profile or profiles.default)
        if chosen is None:
            raise UsageError(
                f"{profiles.path}: no profile named '{profile}' "
                f"(profiles: {', '.join(sorted(profiles.profiles))})"
            )
        settings = chosen.bounces  # its password need not be set to read bounces
    key_envs = [
        p.tracking_key_env
        for p in (profiles.profiles.values() if profiles else ())
        if p.tracking_key_env
    ]
    errors_file = errors.open("ab") if errors else None

    def keep(raw: bytes) -> None:
        if errors_file is not None:
            stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
            errors_file.write(f"From MAILER-DAEMON {stamp}\n".encode())
            errors_file.write(raw.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From "))
            errors_file.write(b"\n\n")

    def on_error(source: str, raw: bytes, why: str, label: str = "not parsed") -> None:
        console.info(f"{source}: {label}: {why}")
        keep(raw)

    def on_unmatched(source: str, raw: bytes) -> None:
        console.info(f"{source}: tied to no message mailctl sent: recorded, not suppressed")
        keep(raw)

    try:
        with open_store() as store, displays.progress("Importing reports") as bar:
            result = import_reports(
                store,
                paths,
                policy=SoftBouncePolicy(limit=soft_limit, window_days=soft_window),
                evidence=EvidencePolicy(
                    trust_unmatched=settings.trust_unmatched, max_unmatched=settings.max_unmatched
                ),
                keys=tracking_keys(store.location, None, key_envs, store.database_key),
                on_message=lambda r: bar.advance(1, status=f"{r.suppressed} suppressed"),
                on_error=on_error,
                on_unmatched=on_unmatched,
                on_unsure=lambda source, raw, why: on_error(source, raw, why, "unsure"),
                on_total=bar.set_total,
                unsubscriber=optional_unsubscriber(profiles, store.location, store.database_key),
                remote=RemoteOptions(
                    password_env=password_env,
                    insecure=insecure,
                    ca_file=ca_file,
                    move_to=move_to,
                    delete=delete,
                ),
            )
    finally:
        if errors_file is not None:
            errors_file.close()
    if json_output:
        console.emit_json(result.as_dict())
    elif not quiet:
        table = Table(title="Bounce import", show_header=False)
        for key, value in result.as_dict().items():
            if not key.endswith("_sources"):
                table.add_row(key.replace("_", " "), str(value))
        console.out.print(table)


@app.command("parse")
def bounces_parse(
    paths: MailboxPaths,
    json_output: JsonPerMessageOption = True,
) -> None:
    """Parse bounce reports without touching the database.

    Prints one JSON object per message: source, kind (bounce, delay, complaint, autoreply,
    delivered, unknown), recipients (address, status, action, reason, permanent, suppress,
    diagnostic, stage: the SMTP command refused, connect/mail/rcpt/data, when the report says),
    tracking_id, original_message_id and confidence (dsn, mta-rule, generic).

    Example: mailctl bounces parse bounce.eml --json
    """
    for path in paths:
        if path != "-" and not Path(path).exists():
            raise MailctlError(f"{path}: no such file or directory")
        for source, raw in iter_messages(path):
            try:
                report = parse_message(raw, source)
            except BounceParseError as exc:
                console.error(f"{source}: {exc}")
                continue
            if json_output:
                console.emit_json_line(report.to_json())
            else:
                console.out.print(
                    f"{source}: {report.kind} " + ", ".join(r.address for r in report.recipients)
                )
