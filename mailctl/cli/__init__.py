"""The command line: the only package that knows Typer; it parses, calls and formats.

This root lists one sub-app per command group (one module each: send, check, report, sim,
bounces, lanes, warmup, rules, dkim, recipients, campaign, suppress, queue, unsubscribe, db) in
one table, `COMMANDS`, and imports a group's module only when that command is used
(`lazy.py`: start-up time matters to cron). It holds the global options (their values in
`global_options.py`) and turns library errors into one-line messages and exit codes through
one table, `EXIT_CODES`; no command catches mailctl's errors itself. Shared options are
`Annotated` aliases in `options.py`; `context.py` holds what the groups share. Nothing
outside mailctl/cli imports this package.

Exit codes: 0 success; 1 error; 2 usage or configuration error; 3 mail waits on something
the operator must fix (`send`); 75 another run holds the database lock (cron may simply try
again).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Annotated

import typer

from mailctl import __version__
from mailctl.cli import console
from mailctl.cli.global_options import state
from mailctl.cli.lazy import LazyEntry, LazyGroup
from mailctl.cli.options import CONTEXT, DbOption, DebugOption, ProfilesOption
from mailctl.errors import (
    CampaignChangedError,
    ConfigError,
    LockedError,
    MailboxLoginError,
    MailctlError,
    NeedsOperator,
    StoreConnectionError,
    StoreUrlError,
    TemplateError,
    UsageError,
)

# Error class -> exit code; an error takes the code of the nearest class in its MRO.
EXIT_CODES: dict[type[MailctlError], int] = {
    LockedError: 75,  # EX_TEMPFAIL: cron can simply try again next time
    StoreUrlError: 2,  # --db names no usable database
    StoreConnectionError: 2,  # refused, bad login, or the server stayed away
    NeedsOperator: 3,  # mail waits on something only the operator can fix
    ConfigError: 2,
    MailboxLoginError: 2,  # wrong mailbox user or password: fix the configuration
    UsageError: 2,
    TemplateError: 2,
    CampaignChangedError: 2,
    MailctlError: 1,
}

# Every command: its module (mailctl/cli/<name>.py) is imported only when the command is used,
# so `mailctl --help` and `mailctl send` do not pay for the other groups (see lazy.py). Top-level
# commands first, then the groups: the order `mailctl --help` lists them in. A new group is one
# line here; its short help is the first sentence of its own help (tests/test_cli_startup.py).
COMMANDS: dict[str, LazyEntry] = {
    "send": LazyEntry(
        "Send a campaign, or every active campaign with --all (the cron form).", group=False
    ),
    "check": LazyEntry(
        "DNS preflight: SPF, DKIM, DMARC, reverse DNS and MX, before the providers see mail.",
        group=False,
    ),
    "report": LazyEntry(
        "What happened: counts, bounce and complaint rates against the circuit breakers, "
        "delivery times, top replies; per sending IP and provider: throttles and lane pauses.",
        group=False,
    ),
    "sim": LazyEntry(
        "Run a simulated mailbox provider on this machine, for rehearsal.", group=False
    ),
    "bounces": LazyEntry("Read bounce and complaint mailboxes (mbox, Maildir, .eml)."),
    "lanes": LazyEntry("Sending lanes (IP x provider): state, limits, and manual suspend/resume."),
    "warmup": LazyEntry("Per-IP warm-up: the plan, today's caps, and manual start/hold/reset."),
    "rules": LazyEntry("Provider limits and reply rules."),
    "dkim": LazyEntry("DKIM keys."),
    "recipients": LazyEntry("Import and inspect recipients."),
    "campaign": LazyEntry("Inspect and control campaigns."),
    "suppress": LazyEntry("The suppression list every send honours."),
    "queue": LazyEntry(
        "The queue: without a command, waiting messages per campaign x lane (or domain) x "
        "reason, with how many, the oldest and the next attempt; retry now or drop by hand."
    ),
    "unsubscribe": LazyEntry("Signed unsubscribe links and the one-click (RFC 8058) endpoint."),
    "db": LazyEntry("The database itself: migrate it, copy it to PostgreSQL."),
}


class MailctlGroup(LazyGroup):
    """The root group: the commands of `COMMANDS`, from the modules of this package."""

    package = __name__
    entries = COMMANDS


app = typer.Typer(
    name="mailctl",
    cls=MailctlGroup,
    help=(
        "Bulk email sending and IP warm-up that protects your sending reputation.\n\n"
        "Typical use: `mailctl recipients import list.csv`, `mailctl send campaign.yaml`, "
        "`mailctl send --all --max-time 9m --quiet` from cron."
    ),
    context_settings=CONTEXT,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        console.out.print(f"mailctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    db: DbOption = None,
    profiles: ProfilesOption = None,
    debug: DebugOption = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            envvar="MAILCTL_LOG",
            help="Messages on stderr: text (one line per event) or json (one object per event).",
        ),
    ] = "text",
) -> None:
    try:
        console.set_log_format(log_format.lower())
    except ValueError as exc:
        raise UsageError(f"--log-format: {exc}") from None
    state.db = db
    state.profiles = profiles
    state.debug = debug


def exit_code(error: MailctlError) -> int:
    """The exit code `EXIT_CODES` gives an error (by its nearest listed class)."""
    return next(EXIT_CODES[cls] for cls in type(error).__mro__ if cls in EXIT_CODES)


@functools.cache
def _command() -> typer.core.TyperGroup:
    """The root command, built once per process: building it (each command's parameters
    from its signature) costs milliseconds that every in-process call would pay again."""
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    return command


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    command = _command()
    args = list(sys.argv[1:] if argv is None else argv)
    state.debug = "--debug" in args
    console.set_quiet(False)
    # Before parsing, so that even a usage error is logged the way the environment asks.
    wanted = os.environ.get("MAILCTL_LOG", "").lower()
    console.set_log_format("json" if wanted == "json" else "text")
    try:
        result = command.main(args=args, prog_name="mailctl", standalone_mode=False)
        if isinstance(result, int) and not isinstance(result, bool):
            return result  # typer.Exit(code) comes back as the return value here
    except typer.Exit as exc:
        return int(exc.exit_code)
    except SystemExit as exc:  # --show-completion and --install-completion exit in a callback
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except typer.Abort:
        console.error("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        if console.log_format() == "json":
            console.error(exc.format_message())  # type: ignore[attr-defined]
        else:
            exc.show(file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except MailctlError as exc:
        if state.debug:
            traceback.print_exc()
        console.error(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no tracebacks by default
        if state.debug:
            traceback.print_exc()
        console.error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return 1
    finally:
        # A command's --quiet or --json lasts for that command: an in-process caller (a
        # test, a benchmark) that shows progress next must not find it silenced.
        console.set_quiet(False)
    return 0


def main() -> None:
    sys.exit(run())
