"""`mailctl rules`: provider lane limits and reply rules, and what a reply would do.

Part of the CLI: parses, calls `mailctl.replies`, formats. Must not be imported by anything
outside mailctl/cli.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mailctl.cli import console
from mailctl.cli.context import load_profiles_near
from mailctl.cli.options import (
    CONTEXT,
    JsonOption,
    OverridesProfileOption,
    ReplyProviderOption,
    RulesProfileOption,
)
from mailctl.config.nodes import format_duration
from mailctl.replies.classify import classify_reply, parse_reply_code
from mailctl.replies.rules import load_rules

app = typer.Typer(help="Provider limits and reply rules.", context_settings=CONTEXT)


@app.command("test")
def rules_test(
    reply: Annotated[str, typer.Argument(help='The SMTP reply, e.g. "421 4.7.28 ... gsmtp".')],
    provider: ReplyProviderOption = None,
    profile: RulesProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Explain what mailctl does with an SMTP reply: scope, suppression, lane action.

    Example: mailctl rules test "421 4.7.0 [TSS04] Messages from 192.0.2.1 deferred" \\
      --provider yahoo
    """
    overrides = load_profiles_near(None).get(profile).rules if profile else None
    rules = load_rules(overrides)
    code = parse_reply_code(reply)
    verdict = classify_reply(code, reply, provider)
    found = rules.match(reply, provider)
    data = {
        "reply": reply,
        "provider": provider,
        "code": code,
        "status": verdict.status,
        "scope": verdict.scope.value,
        "permanent": verdict.permanent,
        "reason": verdict.reason,
        "suppress": verdict.suppress,
        "classifier_rule": verdict.rule,
        "lane_rule": found.rule.id if found else None,
        "lane_action": found.rule.action.value if found else None,
        "duration": found.rule.duration if found else None,
        "retry_after": found.retry_after if found else None,
    }
    if json_output:
        console.emit_json(data)
        return
    table = Table(show_header=False, title="Decision")
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "" if value is None else str(value))
    console.out.print(table)


@app.command("list")
def rules_list(
    profile: OverridesProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """List provider lane limits and reply rules.

    Example: mailctl rules list --json
    """
    overrides = load_profiles_near(None).get(profile).rules if profile else None
    rules = load_rules(overrides)
    limits = {name: lim.as_dict() for name, lim in rules.limits.items()}
    replies = [
        {
            "id": r.id,
            "match": r.pattern.pattern,
            "action": r.action.value,
            "providers": list(r.providers),
            "duration": r.duration,
            "trigger": f"{r.trigger.count} in {format_duration(r.trigger.window)}"
            if r.trigger
            else None,
        }
        for r in rules.replies
    ]
    if json_output:
        console.emit_json({"limits": limits, "replies": replies})
        return
    lim = Table(
        "provider",
        "connections",
        "msgs/conn",
        "per min",
        "per hour",
        "per day",
        "tls",
        title="Lane limits",
    )
    for name, values in limits.items():
        lim.add_row(
            name,
            *(
                str(values.get(k) if values.get(k) is not None else "-")
                for k in (
                    "connections",
                    "messages_per_connection",
                    "per_minute",
                    "per_hour",
                    "per_day",
                    "tls",
                )
            ),
        )
    console.out.print(lim)
    rep = Table("id", "providers", "action", "duration", "trigger", title="Reply rules")
    for rule in rules.replies:
        rep.add_row(
            rule.id,
            ",".join(rule.providers) or "any",
            rule.action.value,
            "" if rule.duration is None else format_duration(rule.duration),
            f"{rule.trigger.count} in {format_duration(rule.trigger.window)}"
            if rule.trigger
            else "",
        )
    console.out.print(rep)
