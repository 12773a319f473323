"""What an unsubscribe writes, through the Store protocol, in a real database of each backend
(a SQLite file; a database on a throwaway PostgreSQL cluster)."""

from __future__ import annotations

from pathlib import Path

from mailctl.cli import run
from mailctl.config.profiles import UnsubscribeScope
from mailctl.store.factory import open_store
from mailctl.unsubscribe.apply import Unsubscriber
from mailctl.unsubscribe.tokens import Signer, load_secret
from tests.helpers.workspace import db_rows

NOW = 1_800_000_000.0


def test_an_unsubscribe_makes_a_temporary_suppression_permanent_and_counts_once(
    store_url: str,
) -> None:
    with open_store(store_url) as store:
        with store.transaction():
            store.suppress("jane@example.com", "soft_bounce_limit", expires_at=NOW + 86400, now=NOW)
            assert store.unsubscribe(
                "jane@example.com", list_name=None, source="one-click:news", now=NOW
            )
            assert not store.unsubscribe(
                "jane@example.com", list_name=None, source="one-click:news", now=NOW
            )
        row = store.suppression_for("jane@example.com", now=NOW + 10 * 86400)
        assert row is not None
        assert (row["reason"], row["source"], row["expires_at"]) == (
            "unsubscribe",
            "one-click:news",
            None,
        )
        # A hard bounce stays what it is: the address is already never mailed.
        with store.transaction():
            store.suppress("joe@example.com", "hard_bounce", now=NOW)
            assert not store.unsubscribe("joe@example.com", list_name=None, source="x", now=NOW)
        assert store.suppression_for("joe@example.com")["reason"] == "hard_bounce"


def test_a_list_scoped_unsubscribe_skips_that_list_only(
    tmp_path: Path, capsys, store_url: str
) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("email\njane@example.com\njoe@example.com\n")
    db = store_url
    for list_name in ("customers", "partners"):
        assert run(["--db", db, "recipients", "import", str(csv), "--list", list_name, "-q"]) == 0
    capsys.readouterr()
    with open_store(db) as store:
        ids = {}
        with store.transaction():
            for name, list_name in (("news", "customers"), ("deals", "partners")):
                ids[name] = store.create_campaign(
                    name=name,
                    path=f"{name}.yaml",
                    profile="sandbox",
                    traffic_class="marketing",
                    pool="default",
                    list_name=list_name,
                    content={},
                    content_hash="x",
                    now=NOW,
                )
            assert store.unsubscribe(
                "jane@example.com", list_name="customers", source="one-click:news", now=NOW
            )
        counter = iter(range(100))
        assert store.queue_messages(
            ids["news"], "customers", NOW, lambda: f"mc1-{next(counter):016d}"
        ) == (1, 1)
        assert store.queue_messages(
            ids["deals"], "partners", NOW, lambda: f"mc1-{next(counter):016d}"
        ) == (2, 0)
        assert store.suppression_for("jane@example.com") is None
        assert store.unsubscribed("jane@example.com", "customers")
        assert not store.unsubscribed("jane@example.com", "partners")
        assert [(r["list_name"], r["address"], r["reason"]) for r in store.list_unsubscribes()] == [
            ("customers", "jane@example.com", "unsubscribe")
        ]
        # Mail already queued for the list's campaigns is not sent either.
        with store.transaction():
            store.unsubscribe("joe@example.com", list_name="customers", source="mail:news", now=NOW)
        states = dict(
            db_rows(
                tmp_path, f"SELECT email, state FROM messages WHERE campaign_id = {ids['news']}"
            )
        )
        assert states == {"jane@example.com": "suppressed", "joe@example.com": "suppressed"}


def test_an_unsubscribe_in_another_letter_case_still_stops_every_spelling(
    tmp_path: Path, capsys, store_url: str
) -> None:
    # The list holds "Jane.Doe@Example.com"; the link was signed for a different spelling.
    csv = tmp_path / "people.csv"
    csv.write_text("email\nJane.Doe@Example.com\njoe@example.com\n")
    db = store_url
    assert run(["--db", db, "recipients", "import", str(csv), "--list", "customers"]) == 0
    capsys.readouterr()
    signer = Signer(load_secret(None, tmp_path / "m.db"))
    unsubscriber = Unsubscriber((signer,), lambda store, campaign: UnsubscribeScope.ALL)
    token = unsubscriber.verify(
        signer.token("JANE.DOE@EXAMPLE.COM", "news", "customers", NOW + 86400), NOW
    )
    with open_store(db) as store:
        with store.transaction():
            campaign_id = store.create_campaign(
                name="news",
                path="news.yaml",
                profile="sandbox",
                traffic_class="marketing",
                pool="default",
                list_name="customers",
                content={},
                content_hash="x",
                now=NOW,
            )
        assert unsubscriber.apply(store, token, source="one-click:news", now=NOW)
        assert unsubscriber.already(store, token)
        counter = iter(range(100))
        # Never sent to the unsubscribed person, in whatever case the list or link spells it.
        assert store.queue_messages(
            campaign_id, "customers", NOW, lambda: f"mc1-{next(counter):016d}"
        ) == (1, 1)
        states = dict(
            db_rows(
                tmp_path, f"SELECT email, state FROM messages WHERE campaign_id = {campaign_id}"
            )
        )
        assert states == {"Jane.Doe@example.com": "suppressed", "joe@example.com": "queued"}
    assert run(["--db", db, "suppress", "check", "jane.doe@EXAMPLE.com"]) == 0
    assert "unsubscribe" in capsys.readouterr().out
