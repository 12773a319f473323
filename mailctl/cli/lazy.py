"""The root command group, which imports a command's module only when that command is used.

`mailctl --help` and shell completion list every command with its short help from a small
table (`LazyEntry`), so they import no command module and none of the domain behind it
(Jinja2, dnspython, aiosmtplib, the store…); running a command, or asking for its own help,
imports that one module. Start-up time matters: cron runs `mailctl send` every minute.

Part of the CLI. Imports Typer and the standard library only: no command module, no mailctl
domain module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, ClassVar

import typer
import typer.core
from typer._click import Command, Context, HelpFormatter
from typer._click.exceptions import UsageError
from typer._click.shell_completion import CompletionItem
from typer._click.utils import make_default_short_help


@dataclass(frozen=True)
class LazyEntry:
    """One command of the root: its short help as `mailctl --help` lists it (the first
    sentence of the command's own help; a test keeps the two equal), and whether it is a
    group of subcommands (`mailctl queue list`) or a single command (`mailctl send`).

    The command lives in the module of the same name in the table's package
    (`mailctl.cli.queue` for `queue`), which exports its Typer sub-app as `app`.
    """

    short_help: str
    group: bool = True


class LazyGroup(typer.core.TyperGroup):
    """A Typer group whose commands come from `entries`, each imported on first use."""

    package: ClassVar[str]
    entries: ClassVar[Mapping[str, LazyEntry]]

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._loaded: dict[str, Command] = {}

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *self.entries]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        entry = self.entries.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = self._load(cmd_name, entry)
        return self._loaded[cmd_name]

    def _load(self, name: str, entry: LazyEntry) -> Command:
        # The documented exception to "no function-local imports": the command module is
        # imported here, on first use, so that start-up costs only the command that runs.
        module = importlib.import_module(f"{self.package}.{name}")
        # Registered on a throwaway Typer exactly as `app.add_typer` would register it on the
        # root, so the command, its help and its options are what an eager root would build.
        holder = typer.Typer(add_completion=False, rich_markup_mode=self.rich_markup_mode)
        if entry.group:
            holder.add_typer(module.app, name=name)
        else:
            holder.add_typer(module.app)  # a single command: merged into the root as is
        command = typer.main.get_group(holder).commands[name]
        if isinstance(command, typer.core.TyperGroup):
            # A group that does something of its own (`mailctl lanes`, `mailctl queue`) runs
            # without a subcommand; every other group shows its help.
            command.no_args_is_help = not command.invoke_without_command
        return command

    def _short_help(self, name: str, limit: int = 45) -> str:
        entry = self.entries.get(name)
        if entry is not None:
            return make_default_short_help(entry.short_help, limit)
        command = self.commands[name]
        return command.get_short_help_str(limit)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        # Click's listing, but the short helps come from the table: no module is imported.
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            formatter.write_dl([(name, self._short_help(name, limit)) for name in names])

    def shell_complete(self, ctx: Context, incomplete: str) -> list[CompletionItem]:
        commands = [
            CompletionItem(name, help=self._short_help(name))
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        # The options of the root itself (Command's completion; TyperGroup's would load every
        # command to read its short help).
        return [*commands, *Command.shell_complete(self, ctx, incomplete)]

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        try:
            return self._click_resolve_command(ctx, args)
        except UsageError as exc:
            # Typer suggests close names from the commands already built; ours are in the table.
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches:
                suggestions = ", ".join(repr(match) for match in matches)
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {suggestions}?"
            raise
