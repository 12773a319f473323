"""A campaign's CSV is imported again on every `send` (cron runs it each minute), but a file
whose bytes and reading are unchanged since its list last took it in is not read a second
time; anything that could make a re-import differ (new bytes, another way of reading them,
another import changing the recipients they share) makes it import again. Real stores on
both backends (`store_url`: a SQLite file and a database on a throwaway PostgreSQL cluster),
the real CLI against a real simulated receiver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailctl.recipients.csv_import import import_csv, import_csv_if_changed
from mailctl.store.factory import open_store
from tests.helpers.workspace import cli, make_workspace


def fields_of(store_url: str, list_name: str) -> dict[str, dict[str, str]]:
    with open_store(store_url) as store:
        return {r["email"]: r["fields"] for r in store.iter_recipients(list_name)}


def test_an_unchanged_file_is_not_imported_again_and_a_changed_one_is(
    store_url: str, tmp_path: Path
) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("email,plan\na@example.com,free\nb@example.com,free\n")
    with open_store(store_url) as store:
        first = import_csv_if_changed(store, csv, list_name="news")
        again = import_csv_if_changed(store, csv, list_name="news")
        with csv.open("a") as f:
            f.write("c@example.com,pro\n")
        grown = import_csv_if_changed(store, csv, list_name="news")
        csv.write_text("email,plan\na@example.com,team\nb@example.com,free\nc@example.com,pro\n")
        edited = import_csv_if_changed(store, csv, list_name="news")
        settled = import_csv_if_changed(store, csv, list_name="news")
    assert first is not None and first.imported == 2
    assert again is None
    assert grown is not None and (grown.imported, grown.unchanged) == (1, 2)
    assert edited is not None and (edited.imported, edited.updated) == (0, 1)
    assert settled is None
    assert fields_of(store_url, "news")["a@example.com"] == {"plan": "team"}


def test_the_same_bytes_read_another_way_are_imported_again(store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("email,backup\na@example.com,b@example.com\n")
    with open_store(store_url) as store:
        assert import_csv_if_changed(store, csv, list_name="news") is not None
        other_column = import_csv_if_changed(store, csv, list_name="news", email_column="backup")
        other_list = import_csv_if_changed(store, csv, list_name="staff")
    assert other_column is not None and other_column.imported == 1
    assert other_list is not None and other_list.unchanged == 1
    assert set(fields_of(store_url, "news")) == {"a@example.com", "b@example.com"}


def test_another_import_changing_shared_recipients_makes_the_file_apply_again(
    store_url: str, tmp_path: Path
) -> None:
    news, vip = tmp_path / "news.csv", tmp_path / "vip.csv"
    news.write_text("email,plan\na@example.com,free\nb@example.com,free\n")
    vip.write_text("email,plan\na@example.com,pro\n")
    with open_store(store_url) as store:
        assert import_csv_if_changed(store, news, list_name="news") is not None
        assert import_csv_if_changed(store, vip, list_name="vip") is not None  # a is now pro
        again = import_csv_if_changed(store, news, list_name="news")
    # Re-importing news.csv is no longer a no-op: it sets a's plan back, as it always did.
    assert again is not None and again.updated == 1
    assert fields_of(store_url, "news")["a@example.com"] == {"plan": "free"}


def test_an_import_that_keeps_existing_fields_or_fails_records_no_version(
    store_url: str, tmp_path: Path
) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("email,plan\na@example.com,free\n")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"email,plan\nb@example.com,caf\xe9\n")  # not UTF-8
    with open_store(store_url) as store:
        import_csv(store, csv, list_name="news", skip_existing=True)
        assert store.list_source("news") is None
        assert import_csv_if_changed(store, csv, list_name="news") is not None
        assert store.list_source("news") is not None
        with pytest.raises(Exception, match="cannot decode"):
            import_csv_if_changed(store, bad, list_name="broken")
        assert store.list_source("broken") is None


def test_cron_sends_reread_the_list_only_when_it_changed(
    backend: str, sim_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=3)
    runs = []
    for change in (None, None, "late@example.com,Late\n", None):
        if change:
            with (ws / "list.csv").open("a") as f:
                f.write(change)
        capsys.readouterr()
        assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
        runs.append(json.loads(capsys.readouterr().out)["sent"])
    assert runs == [3, 0, 1, 0]
    assert len(server.deliveries) == 4
