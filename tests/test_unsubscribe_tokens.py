"""Signed unsubscribe tokens, the key file, rendered links and `mailctl unsubscribe verify`."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from mailctl.cli import run
from mailctl.errors import ConfigError
from mailctl.unsubscribe.tokens import (
    Problem,
    Signer,
    TokenError,
    key_file_for,
    load_secret,
    token_from_url,
    url_with_token,
)

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


def test_a_token_says_who_which_campaign_and_list_and_until_when() -> None:
    signer = Signer(SECRET)
    token = signer.token("Jane@Example.com", "news", "customers", NOW + 3600)
    target = signer.verify(token, NOW)
    assert (target.address, target.campaign, target.list_name, target.expires_at) == (
        "Jane@Example.com",
        "news",
        "customers",
        int(NOW + 3600),
    )
    assert len(token) < 110  # compact enough for a List-Unsubscribe header


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda t, s: t[:-1] + ("A" if t[-1] != "A" else "B"), Problem.TAMPERED),
        (
            lambda t, s: (
                s.token("john@example.com", "news", "customers", NOW + 3600).split(".")[0]
                + "."
                + t.split(".")[1]
            ),
            Problem.TAMPERED,
        ),
        (
            lambda t, s: Signer(b"another-secret-another-secret").token(
                "jane@example.com", "news", "customers", NOW + 3600
            ),
            Problem.TAMPERED,
        ),
        (lambda t, s: s.token("jane@example.com", "news", "customers", NOW - 1), Problem.EXPIRED),
        (lambda t, s: "nodot", Problem.MALFORMED),
        (lambda t, s: "a.b.c", Problem.MALFORMED),
        (lambda t, s: "x" * 5000 + ".y", Problem.MALFORMED),
        (lambda t, s: "!!!!.????", Problem.MALFORMED),
    ],
)
def test_forged_moved_expired_and_malformed_tokens_are_refused(mutate, problem) -> None:
    signer = Signer(SECRET)
    token = signer.token("jane@example.com", "news", "customers", NOW + 3600)
    with pytest.raises(TokenError) as caught:
        signer.verify(mutate(token, signer), NOW)
    assert caught.value.problem is problem


def test_urls_carry_the_token_in_t() -> None:
    assert url_with_token("https://example.com/unsubscribe", "abc.def") == (
        "https://example.com/unsubscribe?t=abc.def"
    )
    assert url_with_token("https://example.com/u?list=a", "abc.def") == (
        "https://example.com/u?list=a&t=abc.def"
    )
    assert token_from_url("https://example.com/u?list=a&t=abc.def") == "abc.def"
    assert token_from_url("abc.def") == "abc.def"
    assert token_from_url("https://example.com/u") is None


def test_the_key_file_is_created_once_next_to_the_database_with_mode_0600(tmp_path: Path) -> None:
    db = tmp_path / "mailctl.db"
    first = load_secret(None, db)
    assert key_file_for(db) == tmp_path / "mailctl.db.unsubscribe-key"
    assert stat.S_IMODE(os.stat(key_file_for(db)).st_mode) == 0o600
    assert load_secret(None, db) == first and len(first) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["mailctl.db.unsubscribe-key"]


def test_the_secret_from_the_profiles_variable_wins_and_must_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MC_UNSUB_SECRET", "s" * 40)
    assert load_secret("MC_UNSUB_SECRET", tmp_path / "m.db") == b"s" * 40
    assert not key_file_for(tmp_path / "m.db").exists()
    monkeypatch.delenv("MC_UNSUB_SECRET")
    with pytest.raises(ConfigError, match="^environment variable MC_UNSUB_SECRET "):
        load_secret("MC_UNSUB_SECRET", tmp_path / "m.db")
    monkeypatch.setenv("MC_UNSUB_SECRET", "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_secret("MC_UNSUB_SECRET", tmp_path / "m.db")


def test_unsubscribe_verify_says_what_a_link_means(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "m.db"
    signer = Signer(load_secret(None, db))
    expires = 1_893_456_000  # 2030-01-01
    url = url_with_token(
        "https://example.com/unsubscribe",
        signer.token("jane@example.com", "news", "customers", expires),
    )
    assert run(["--db", str(db), "unsubscribe", "verify", url]) == 0
    assert capsys.readouterr().out == (
        "valid: unsubscribes jane@example.com (campaign news, list customers); "
        "good until 2030-01-01T00:00:00Z\n"
    )
    assert run(["--db", str(db), "unsubscribe", "verify", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "valid": True,
        "address": "jane@example.com",
        "campaign": "news",
        "list": "customers",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    assert run(["--db", str(db), "unsubscribe", "verify", url[:-3] + "AAA"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        "Error: the token's signature does not match (tampered, or signed with another key)\n",
    )
    old = url_with_token(
        "https://x/u", signer.token("jane@example.com", "news", "c", time.time() - 5)
    )
    assert run(["--db", str(db), "unsubscribe", "verify", old]) == 2
    assert capsys.readouterr().err == "Error: the unsubscribe link has expired\n"


def test_profile_unsubscribe_settings_are_validated_with_file_and_line(tmp_path: Path) -> None:
    from mailctl.config.profiles import UnsubscribeScope, load_profiles

    path = tmp_path / "profiles.yaml"
    path.write_text(
        "profiles:\n  sandbox:\n    transport: sandbox\n"
        "    unsubscribe: {secret_env: UNSUB_KEY, valid_for: 30d, scope: list}\n"
    )
    settings = load_profiles(path).profiles["sandbox"].unsubscribe
    assert (settings.secret_env, settings.valid_for, settings.scope) == (
        "UNSUB_KEY",
        30 * 86400,
        UnsubscribeScope.LIST,
    )
    path.write_text(
        "profiles:\n  sandbox:\n    transport: sandbox\n    unsubscribe:\n      scope: campaign\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_profiles(path)
    assert str(caught.value).startswith(f"{path}:5: profiles.sandbox.unsubscribe.scope: ")


def test_a_campaign_without_a_url_takes_the_profiles_base_url_and_needs_one(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "l.csv").write_text("email\njane@example.com\n")
    (tmp_path / "c.yaml").write_text(
        "name: n\nfrom: a@example.com\nsubject: s\ntext: 'bye {{ unsubscribe_url }}'\n"
        "recipients: l.csv\n"
    )
    profile = "default_profile: sandbox\nprofiles:\n  sandbox:\n    transport: sandbox\n"
    (tmp_path / "profiles.yaml").write_text(
        profile + "    unsubscribe: {base_url: 'https://lists.example.com/u'}\n"
    )
    assert run(["send", "c.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"List-Unsubscribe: <https://lists\.example\.com/u\?t=[\w-]+\.[\w-]{22}>", out)
    assert re.search(r"bye https://lists\.example\.com/u\?t=[\w-]+\.[\w-]{22}", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "l.csv", "profiles.yaml"]
    (tmp_path / "profiles.yaml").write_text(profile)
    assert run(["send", "c.yaml", "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        "Error: c.yaml: a marketing campaign needs 'unsubscribe' (url and/or mailto), or "
        "profile 'sandbox' an unsubscribe.base_url (Gmail and Yahoo require one-click "
        "unsubscribe for bulk mail)\n"
    )


def test_after_a_key_rotation_links_signed_with_the_previous_key_still_verify(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNSUB_NEW", "n" * 32)
    monkeypatch.setenv("UNSUB_OLD", "o" * 32)
    (tmp_path / "profiles.yaml").write_text(
        "profiles:\n  sandbox:\n    transport: sandbox\n"
        "    unsubscribe: {secret_env: UNSUB_NEW, previous_secret_env: UNSUB_OLD}\n"
    )
    expires = time.time() + 86400
    for secret, code in ((b"n" * 32, 0), (b"o" * 32, 0), (b"x" * 32, 2)):
        token = Signer(secret).token("jane@example.com", "news", "customers", expires)
        assert run(["unsubscribe", "verify", token]) == code
    capsys.readouterr()
    assert not key_file_for(tmp_path / "mailctl.db").exists()
