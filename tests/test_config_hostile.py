"""Every configuration error is one line with file, line and key, exit 2: impossible dates,
unknown encodings, YAML tags, deep nesting, and durations or rates that are not positive
and finite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.workspace import cli, make_workspace

WARMUP = """\
    pools:
      marketing: [{{ip: 192.0.2.10, warmup: {{preset: linear, start: {start}, target_daily: 1000}}}}]
"""  # noqa: E501


def run_send(ws: Path, capsys) -> tuple[int, str]:
    code = cli(ws, "send", str(ws / "c.yaml"), "--dry-run")
    err = capsys.readouterr().err
    return code, err


def profile_with(tmp_path: Path, lines: str) -> Path:
    ws = make_workspace(tmp_path, 2525)
    text = (ws / "profiles.yaml").read_text().replace("    max_age: 1h\n", "")
    (ws / "profiles.yaml").write_text(text.replace("    retry: [5m, 10m, 20m]\n", "") + lines)
    return ws


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ("    retry: [-600]\n", "profiles.relay.retry[0]", "must be a positive, finite duration"),
        ("    retry: [.nan]\n", "profiles.relay.retry[0]", "must be a positive, finite duration"),
        ("    retry: [.inf]\n", "profiles.relay.retry[0]", "must be a positive, finite duration"),
        ("    timeout: -5\n", "profiles.relay.timeout", "must be a positive, finite duration"),
        ("    max_age: -1\n", "profiles.relay.max_age", "must be a positive, finite duration"),
        ("    max_age: 0s\n", "profiles.relay.max_age", "must be a positive, finite duration"),
        (
            "    breakers: {bounce_rate: .nan}\n",
            "profiles.relay.breakers.bounce_rate",
            "expected a finite number",
        ),
        (
            "    timeout: !!python/name:os.system 5\n",
            "",
            "YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed",
        ),
    ],
)
def test_a_bad_profile_value_is_one_line_naming_file_line_and_key(
    tmp_path: Path, capsys, lines: str, key: str, message: str
) -> None:
    ws = profile_with(tmp_path, lines)
    code, err = run_send(ws, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "internal error" not in err
    line = line_of(ws / "profiles.yaml", lines.strip().split(":")[0])
    where = f"{key}: " if key else ""
    assert err.startswith(f"Error: {ws / 'profiles.yaml'}:{line}: {where}{message}")


def test_an_impossible_warmup_start_date_names_its_line(tmp_path: Path, capsys) -> None:
    ws = profile_with(tmp_path, WARMUP.format(start="2026-02-30"))
    code, err = run_send(ws, capsys)
    assert code == 2
    line = line_of(ws / "profiles.yaml", "2026-02-30")
    assert err == (
        f"Error: {ws / 'profiles.yaml'}:{line}: profiles.relay.pools.marketing[0].warmup.start:"
        " '2026-02-30' is not a date (YYYY-MM-DD): day is out of range for month\n"
    )


def test_5000_deep_nesting_is_one_line(tmp_path: Path, capsys) -> None:
    ws = profile_with(tmp_path, "    rules: " + "[" * 5000 + "]" * 5000 + "\n")
    text = (ws / "profiles.yaml").read_text()
    # The workspace already has a rules key: keep only the deep one.
    (ws / "profiles.yaml").write_text(re.sub(r"(?m)^    rules: \{limits.*\n", "", text))
    code, err = run_send(ws, capsys)
    assert code == 2
    line = line_of(ws / "profiles.yaml", "[[[")
    assert err == f"Error: {ws / 'profiles.yaml'}:{line}: nested more than 64 levels deep\n"


@pytest.mark.parametrize("encoding", ["rot13", "base64", "no-such-codec"])
def test_an_unknown_csv_encoding_names_its_line(tmp_path: Path, capsys, encoding: str) -> None:
    ws = make_workspace(tmp_path, 2525)
    campaign = (ws / "c.yaml").read_text()
    (ws / "c.yaml").write_text(
        campaign.replace(
            "recipients: list.csv", f"recipients: {{csv: list.csv, encoding: {encoding}}}"
        )
    )
    code, err = run_send(ws, capsys)
    assert code == 2
    line = line_of(ws / "c.yaml", "encoding:")
    assert err == (
        f"Error: {ws / 'c.yaml'}:{line}: recipients.encoding: '{encoding}' is not a text"
        " encoding (e.g. utf-8, latin-1, cp1252)\n"
    )


def test_a_python_tag_in_a_campaign_is_refused_before_anything_is_built(
    tmp_path: Path, capsys
) -> None:
    ws = make_workspace(tmp_path, 2525)
    (ws / "c.yaml").write_text(
        (ws / "c.yaml").read_text() + "headers: {X-A: !!python/object/apply:os.system [id]}\n"
    )
    code, err = run_send(ws, capsys)
    assert code == 2
    line = line_of(ws / "c.yaml", "python/object")
    assert err == (
        f"Error: {ws / 'c.yaml'}:{line}: YAML tag"
        " 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed (plain values only)\n"
    )
