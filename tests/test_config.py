"""Config loading: every error is one line naming file, line and key path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailctl.config.campaign import load_campaign
from mailctl.config.nodes import parse_duration
from mailctl.config.profiles import TransportKind, load_profiles
from mailctl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(loader, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_profiles_and_campaign_load() -> None:
    profiles = load_profiles(ROOT / "profiles.yaml")
    assert profiles.default == "sandbox"
    assert profiles.get(None).transport is TransportKind.SANDBOX
    campaign = load_campaign(ROOT / "campaigns" / "welcome.yaml")
    assert campaign.name == "welcome"
    assert campaign.text and "{{ first_name }}" in campaign.text
    assert campaign.csv is not None and campaign.csv.path.name == "welcome.csv"


def test_commented_examples_in_profiles_are_valid(tmp_path: Path) -> None:
    """The commented relay and direct profiles must load once uncommented."""
    lines = (ROOT / "profiles.yaml").read_text().splitlines()
    uncommented, in_examples = [], False
    for line in lines:
        in_examples = in_examples or line.lstrip().startswith("# ---")
        body = line.replace("# ", "", 1)
        if in_examples and line.startswith("  # ") and not body.strip().startswith(("#", "---")):
            uncommented.append(body)
        else:
            uncommented.append(line)
    path = write(tmp_path, "profiles.yaml", "\n".join(uncommented))
    profiles = load_profiles(path)
    assert set(profiles.profiles) == {"sandbox", "relay", "direct"}
    direct = profiles.profiles["direct"]
    assert [ip.ip for ip in direct.pools["marketing"]] == [
        "203.0.113.20",
        "203.0.113.21",
        "203.0.113.30",
    ]
    assert [ip.host for ip in direct.pools["marketing"]] == [None, None, "mta2"]
    warmup = direct.pools["marketing"][0].warmup
    assert warmup is not None and warmup.preset == "sendgrid" and warmup.target_daily == 100000
    assert direct.provider_hourly == {"google": 20000}
    relay = profiles.profiles["relay"]
    assert relay.port == 587 and relay.password_env == "SMTP_PASSWORD"


BAD_IP = """\
profiles:
  direct:
    transport: direct
    pools:
      marketing:
        - 10.0.0.1
        - 10.0.0.999
"""


def test_bad_ip_names_file_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles.yaml", BAD_IP)
    assert error_of(load_profiles, path) == (
        f"{path}:7: profiles.direct.pools.marketing[1]: '10.0.0.999' is not an IPv4 or IPv6 address"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "profiles:\n  s:\n    transport: sandbox\n    colour: red\n",
            ":4: profiles.s.colour: unknown key 'colour'",
        ),
        (
            "profiles:\n  s:\n    transport: pigeon\n",
            ":3: profiles.s.transport: 'pigeon' is not one of sandbox|relay|direct",
        ),
        ("profiles:\n  s:\n    outbox: x\n", ":3: profiles.s: missing required key 'transport'"),
        (
            "profiles:\n  r:\n    transport: relay\n    host: smtp.example.com\n    port: many\n",
            ":5: profiles.r.port: expected a whole number, got 'many'",
        ),
        (
            "profiles:\n  r:\n    transport: relay\n    host: smtp.example.com\n    port: 99999\n",
            ":5: profiles.r.port: 99999 is not a TCP port",
        ),
        (
            "profiles:\n  s:\n    transport: sandbox\n    connections: 0\n",
            ":4: profiles.s.connections: must be at least 1, got 0",
        ),
        (
            "profiles:\n  s:\n    transport: sandbox\n    max_age: soon\n",
            ":4: profiles.s.max_age: 'soon' is not a duration",
        ),
        ("profiles: [1, 2]\n", ":1: profiles: expected a mapping, got a list"),
        (
            "profiles:\n  s:\n    transport: sandbox\n  s:\n    transport: sandbox\n",
            ":4: profiles.s: duplicate key",
        ),
        (
            "profiles:\n  s:\n    transport: sandbox\n    tls: starttls\n",
            ":4: profiles.s.tls: 'tls' applies only to transport: relay",
        ),
    ],
)
def test_invalid_profiles_report_where_and_what_is_wrong(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, "profiles.yaml", text)
    assert expected in error_of(load_profiles, path)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles.yaml", "profiles:\n  s:\n    transport: [sandbox\n    x: 1\n")
    message = error_of(load_profiles, path)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message
    line = int(message.split(":")[1])
    assert line in (3, 4, 5)


def test_missing_profiles_file_is_reported_as_not_found(tmp_path: Path) -> None:
    assert "file not found" in error_of(load_profiles, tmp_path / "nope.yaml")


def test_password_env_checked_only_for_the_profile_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "profiles.yaml",
        "profiles:\n  sandbox:\n    transport: sandbox\n  relay:\n    transport: relay\n"
        "    host: smtp.example.com\n    username: me\n    password_env: MAILCTL_TEST_PW\n",
    )
    monkeypatch.delenv("MAILCTL_TEST_PW", raising=False)
    profiles = load_profiles(path)
    profiles.get("sandbox")  # fine: the relay's variable does not matter here
    with pytest.raises(ConfigError, match="MAILCTL_TEST_PW is not set"):
        profiles.get("relay")
    monkeypatch.setenv("MAILCTL_TEST_PW", "s3cret")
    assert profiles.get("relay").password() == "s3cret"


def test_ip_in_two_pools_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "profiles.yaml",
        "profiles:\n  d:\n    transport: direct\n    pools:\n      a: [192.0.2.1]\n      b: [192.0.2.1]\n",
    )
    assert "is in pools 'a' and 'b'" in error_of(load_profiles, path)


def test_unknown_warmup_preset_names_the_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "profiles.yaml",
        "profiles:\n  d:\n    transport: direct\n    pools:\n      m:\n        - ip: 192.0.2.1\n"
        "          warmup: {preset: turbo, start: 2026-12-01, target_daily: 1000}\n",
    )
    assert ":7: profiles.d.pools.m[0].warmup.preset: unknown preset 'turbo'" in error_of(
        load_profiles, path
    )


def test_warmup_volumes_that_decrease_are_a_config_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "profiles.yaml",
        "profiles:\n  d:\n    transport: direct\n    pools:\n      m:\n        - ip: 192.0.2.1\n"
        "          warmup: {volumes: [100, 50], start: 2026-12-01, target_daily: 1000}\n",
    )
    assert error_of(load_profiles, path) == (
        f"{path}:7: profiles.d.pools.m[0].warmup: "
        "warm-up volumes must not decrease (day 2: 50 after 100)"
    )


def test_config_error_carries_file_line_and_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles.yaml", BAD_IP)
    with pytest.raises(ConfigError) as info:
        load_profiles(path)
    error = info.value
    assert (error.file, error.line, error.key) == (
        str(path),
        7,
        "profiles.direct.pools.marketing[1]",
    )


CAMPAIGN = """\
name: c1
from: "Shop <news@example.com>"
subject: "Hi {{ first_name }}"
text: "Hello"
recipients: list.csv
unsubscribe: {url: "https://example.com/u"}
"""


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (("name: c1", "name: 'bad name'"), ":1: name: 'bad name' must be letters"),
        (
            ('from: "Shop <news@example.com>"', "from: nobody"),
            ":2: from: 'nobody' is not an address",
        ),
        # A marketing campaign without 'unsubscribe' is refused once its profile is known
        # (it may give unsubscribe.base_url): tests/test_unsubscribe_tokens.py.
        (("recipients: list.csv", "recipients: list.csv\nlist: x"), "exactly one of 'recipients'"),
        (('text: "Hello"', "text_file: missing.txt"), ":4: text_file: cannot read"),
        (
            ('text: "Hello"', 'text: "Hello"\nheaders: {"Bad Name": x}'),
            "'Bad Name' is not a valid header name",
        ),
        (
            ('text: "Hello"', 'text: "Hello"\nheaders: {Subject: x}'),
            "header 'Subject' is set by mailctl",
        ),
        (
            ('text: "Hello"', 'text: "Hello"\nclass: bulk'),
            "'bulk' is not one of transactional|marketing",
        ),
    ],
)
def test_invalid_campaigns_report_where_and_what_is_wrong(
    tmp_path: Path, replace: tuple[str, str], expected: str
) -> None:
    path = write(tmp_path, "c.yaml", CAMPAIGN.replace(*replace))
    assert expected in error_of(load_campaign, path)


def test_durations_parse_units_and_reject_unknown_ones() -> None:
    assert parse_duration("9m") == 540
    assert parse_duration("1h30m") == 5400
    assert parse_duration("3d") == 259200
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("9 parsecs")


def test_config_imports_none_of_the_domain_packages_above_it() -> None:
    code = (
        "import sys, json, mailctl.config.profiles, mailctl.config.campaign, "
        "mailctl.config.provider_rules; print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    above = ("mailctl.replies", "mailctl.dns", "mailctl.reputation", "mailctl.delivery")
    assert [name for name in json.loads(done.stdout) if name.startswith(above)] == []


def test_provider_wide_limits_are_read_and_a_bad_one_names_its_line(tmp_path: Path) -> None:
    good = write(
        tmp_path,
        "good.yaml",
        "profiles:\n  relay:\n    transport: relay\n    host: smtp.example.com\n"
        "    providers: {Google: {max_per_hour: 500}}\n",
    )
    assert load_profiles(good).get("relay").provider_hourly == {"google": 500}
    bad = write(
        tmp_path,
        "bad.yaml",
        "profiles:\n  relay:\n    transport: relay\n    host: smtp.example.com\n"
        "    providers:\n      google: {max_per_hour: 0}\n",
    )
    message = error_of(load_profiles, bad)
    assert message.startswith(f"{bad}:6: profiles.relay.providers.google.max_per_hour: ")
