"""The CLI's shape: one table of exit codes, one sub-app per command group, no command that
handles mailctl's errors itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer

from mailctl import errors
from mailctl.cli import (
    EXIT_CODES,
    bounces,
    campaign,
    check,
    dkim,
    exit_code,
    lanes,
    recipients,
    report,
    rules,
    run,
    send,
    sim,
    suppress,
    warmup,
)

CLI = Path(__file__).resolve().parent.parent / "mailctl" / "cli"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.MailctlError("x"), 1),
        (errors.StoreError("x"), 1),
        (errors.LockedError("x"), 75),
        (errors.ConfigError("x"), 2),
        (errors.UsageError("x"), 2),
        (errors.TemplateError("x"), 2),
        (errors.CampaignChangedError("x"), 2),
        (errors.DkimKeyError("x"), 2),  # a config error about a key: its nearest listed class
        (errors.DkimError("x"), 1),
        (errors.InvalidAddress("x"), 1),
    ],
)
def test_each_error_class_takes_the_exit_code_of_its_nearest_listed_class(
    error: errors.MailctlError, code: int
) -> None:
    assert exit_code(error) == code


def test_exit_codes_name_only_mailctl_errors_and_end_at_the_base() -> None:
    assert all(issubclass(cls, errors.MailctlError) for cls in EXIT_CODES)
    assert EXIT_CODES[errors.MailctlError] == 1


def test_a_usage_error_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["send"]) == 2
    assert capsys.readouterr().err == "Error: give a campaign file or --all (not both)\n"


def test_no_command_module_catches_mailctl_error_itself() -> None:
    for path in sorted(CLI.glob("*.py")):
        if path.name == "__init__.py":
            continue  # the root: the one place errors become exit codes
        tree = ast.parse(path.read_text(encoding="utf-8"))
        caught = {
            ast.unparse(handler.type)
            for handler in ast.walk(tree)
            if isinstance(handler, ast.ExceptHandler) and handler.type is not None
        }
        assert not any("MailctlError" in name for name in caught), (path.name, caught)


def test_every_command_group_module_exports_its_typer_app() -> None:
    for module in (
        bounces,
        campaign,
        check,
        dkim,
        lanes,
        recipients,
        report,
        rules,
        send,
        sim,
        suppress,
        warmup,
    ):
        assert isinstance(module.app, typer.Typer), module.__name__
