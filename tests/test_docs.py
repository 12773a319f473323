"""The README's CLI reference is generated from --help; it must match the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && pytest"
    assert command in readme
    assert command in ci


def _tests_section_commands() -> list[str]:
    """The shell blocks of the README's "## Tests" section, one string per block."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0].strip() for block in section.split("```sh")[1:]]


def test_ci_runs_the_readme_tests_section_line_for_line() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command, checks = _tests_section_commands()
    # The test command is one line of CI as it stands, not only a substring of one.
    assert test_command == "pip install -e '.[test]' && pytest"
    assert test_command in ci_lines
    # Each check the README lists runs in CI, before the test command.
    for check in checks.split(" && "):
        assert check in ci_lines, check
        assert ci_lines.index(check) < ci_lines.index(test_command), check
