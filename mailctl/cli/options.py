"""Shared command-line options, written once as `Annotated` aliases.

Every command that takes one of these options imports its alias from here, so the flag, its
help text and its metavar stay identical everywhere. Only Typer and the standard library are
imported here: no mailctl domain module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Every group's context settings: -h as well as --help, help text up to 100 columns wide.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# --------------------------------------------------------------------------- global options

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="FILE|URL",
        help="SQLite file (or sqlite:///path), or postgresql://user@host/dbname to share "
        "one queue between sending hosts [default: $MAILCTL_DB or ./mailctl.db]",
    ),
]
ProfilesOption = Annotated[
    Path | None,
    typer.Option(
        "--profiles",
        metavar="FILE",
        help="profiles.yaml to use [default: $MAILCTL_PROFILES, next to the campaign, or ./]",
    ),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
HostOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="This sending host: send only from pool IPs on it (a pool IP's `host:`) "
        "[default: the machine's hostname].",
        show_default=False,
    ),
]

# --------------------------------------------------------------------------- output

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
JsonSummaryOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary.")]
JsonLinesOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
JsonPerMessageOption = Annotated[
    bool, typer.Option("--json", help="One JSON object per message (the stable format).")
]
JsonReportOption = Annotated[
    bool, typer.Option("--json", help="Print the report as JSON (stable; see README).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]

# --------------------------------------------------------------------------- subjects

ListOption = Annotated[str | None, typer.Option("--list", help="Only this list.")]
CampaignName = Annotated[str, typer.Argument(help="Campaign name.")]
IpArgument = Annotated[str, typer.Argument(help="Sending IP.")]
IpOption = Annotated[str, typer.Option(help="Sending IP.")]
OnlyIpOption = Annotated[str | None, typer.Option(help="Only this sending IP.")]
ProviderOption = Annotated[str, typer.Option(help="Provider.")]
LaneProviderOption = Annotated[str, typer.Option(help="Provider, e.g. google, microsoft, yahoo.")]
ReplyProviderOption = Annotated[str | None, typer.Option(help="The provider the reply came from.")]
OverridesProfileOption = Annotated[
    str | None, typer.Option(help="Include this profile's overrides.")
]
RulesProfileOption = Annotated[str | None, typer.Option(help="Use this profile's rule overrides.")]
OnlyProfileOption = Annotated[str | None, typer.Option(help="Only this profile's IPs.")]
CheckProfileOption = Annotated[
    str | None, typer.Option(help="Profile to check [default: the default].")
]
ReasonFilterOption = Annotated[str | None, typer.Option(help="Only this reason.")]
MailboxPaths = Annotated[
    list[str], typer.Argument(help="mbox files, Maildir folders, .eml files, or - for stdin.")
]
SendZoneOption = Annotated[
    list[Path] | None,
    typer.Option(
        metavar="FILE",
        help="Answer the preflight from this zone file, not live DNS (repeatable).",
    ),
]
CheckZoneOption = Annotated[
    list[Path] | None,
    typer.Option(
        metavar="FILE", help="Answer from this zone file instead of live DNS (repeatable)."
    ),
]
