"""What every command group shares: the global options' values (`state`, defined in
`global_options.py`) and the few helpers that turn them into a store, a profiles file, a point
in time.

Part of the CLI: it may import the domain and the store, never another command module.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mailctl.cli.global_options import state as state  # the groups read it from here
from mailctl.config.profiles import ProfilesFile, find_profiles, load_profiles
from mailctl.errors import ConfigError, MailctlError, UsageError
from mailctl.store.base import Store
from mailctl.store.factory import backend_of, resolve_db, sqlite_path
from mailctl.store.factory import open_store as open_db
from mailctl.store.sqlite import SqliteStore


def open_store() -> Store:
    """The database --db / MAILCTL_DB names (a SQLite file, or a PostgreSQL URL)."""
    return open_db(state.db)


def scratch_store() -> Store:
    """A database in memory, gone when closed (dry runs: nothing touches the disk)."""
    return SqliteStore.open(":memory:")


def campaign_recipient_keys(campaign_name: str) -> set[str]:
    """Address keys with a message in the campaign in the database as it is (read only; none
    when there is no database yet)."""
    target = resolve_db(state.db)
    if backend_of(target) == "sqlite" and not sqlite_path(target).exists():
        return set()
    with open_db(target, migrate=False) as store:
        if store.schema_version == 0:  # a server database never used yet
            return set()
        return store.campaign_recipient_keys(campaign_name)


def existing_store(list_name: str) -> Store:
    """The database as it is, to read `list_name` from: never created, migrated or written."""
    target = resolve_db(state.db)
    if backend_of(target) == "sqlite" and not sqlite_path(target).exists():
        raise MailctlError(f"{sqlite_path(target)} does not exist, so list '{list_name}' is empty")
    return open_db(target, migrate=False)


def load_profiles_near(near: Path | None) -> ProfilesFile:
    return load_profiles(find_profiles(state.profiles, near))


def optional_profiles() -> ProfilesFile | None:
    """profiles.yaml when one can be found and read; None when commands can do without."""
    try:
        return load_profiles_near(None)
    except ConfigError:
        return None


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def as_of(date_text: str | None) -> dt.datetime:
    if date_text is None:
        return dt.datetime.now(dt.UTC)
    try:
        day = dt.date.fromisoformat(date_text)
    except ValueError:
        raise UsageError(f"--date: '{date_text}' is not a date (YYYY-MM-DD)") from None
    return dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
