"""The queue's filter as SQL, shared by both backends: which messages wait, what each waits
for (one groupable label), and the WHERE clause of `mailctl queue`'s filters.

The dialects differ only in the parameter placeholder and the substring function; each
backend passes its own. Imports only the store's interface.
"""

from __future__ import annotations

from typing import Any

from mailctl.store.base import QueueFilter

# What a waiting message waits for, as one groupable label (deferrals recorded before
# reasons were stored have none).
KIND = """CASE WHEN m.state = 'deferred'
                THEN coalesce(m.wait_kind, 'deferred (reason not recorded)')
                ELSE 'queued' END"""
WAITING = "m.state IN ('queued', 'deferred')"
LIST_COLUMNS = (
    "id", "campaign", "email", "domain", "ip", "provider", "state", "attempts", "queued_at",
    "next_attempt_at", "kind", "reason",
)  # fmt: skip


def waiting_where(where: QueueFilter, *, ph: str, find: str) -> tuple[str, list[Any]]:
    """The WHERE clause (without the keyword) and its parameters for waiting messages that
    match `where`. `ph` is the dialect's placeholder (`?`, `%s`); `find` its substring
    position function taking (haystack, needle): `instr` in SQLite, `strpos` in PostgreSQL."""
    clauses = [WAITING]
    params: list[Any] = []
    for column, value in (
        ("m.campaign_id", where.campaign_id),
        ("m.domain", where.domain),
        ("m.provider", where.provider),
    ):
        if value is not None:
            clauses.append(f"{column} = {ph}")
            params.append(value)
    if where.address_key is not None:
        clauses.append(
            f"""m.recipient_id IN (SELECT id FROM recipients WHERE email_key = {ph}
                 UNION SELECT id FROM recipients WHERE merged_into IN
                   (SELECT id FROM recipients WHERE email_key = {ph}))"""
        )
        params += [where.address_key, where.address_key]
    if where.reason is not None:
        clauses.append(
            f"({find}(lower({KIND}), {ph}) > 0"
            f" OR {find}(lower(coalesce(m.wait_reason, '')), {ph}) > 0)"
        )
        params += [where.reason.lower(), where.reason.lower()]
    return " AND ".join(clauses), params
