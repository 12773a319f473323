"""The bounce parser on bounces made by real MTAs here (scripts/make_bounce_fixtures.sh).

These messages come from software nobody here wrote and were never used to write parser rules
(issue #14, item 3). The labels come from the setup that made them: the replies the fixture
server was told to give, not from any parser. A fixture the parser gets wrong is marked
``xfail(strict=True)`` with what it misses, so the gap stays visible and the test turns red
once it is fixed, until the mark goes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailctl.bounces.parse import FailedRecipient, parse_message

DATA = Path(__file__).parent / "data" / "mta_bounces"
LABELS: dict[str, dict] = json.loads((DATA / "labels.json").read_text())

# Fixture file -> what the parser misses on it (recipients, permanent or suppress).
KNOWN_MISSES: dict[str, str] = {}

# Fixture file -> the reason the parser gives instead of the labelled one.
KNOWN_REASON_MISSES: dict[str, str] = {
    # The label is right (see README.md there): the domain is Exim's own local domain and the
    # user does not exist. "Unrouteable address" is Exim's wording for any address no router
    # accepts, an unknown domain as much as an unknown local user, so the words alone cannot
    # tell; Sisimai reads them as hostunknown too.
    "exim/local-userunknown.eml": (
        "Exim's 'Unrouteable address' for a local user with no router read as hostunknown,"
        " not userunknown (suppress is right either way)"
    ),
}

# Fixture file -> how the parser gets the kind (bounce or delay warning) wrong.
KNOWN_KIND_MISSES: dict[str, str] = {}


def _params(misses: dict[str, str]) -> list:
    assert set(misses) <= set(LABELS), set(misses) - set(LABELS)
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=f"issue #14: {misses[name]}")]
            if name in misses
            else [],
        )
        for name in sorted(LABELS)
    ]


def _parsed(name: str) -> dict[str, FailedRecipient]:
    report = parse_message((DATA / name).read_bytes(), name)
    return {recipient.address.lower(): recipient for recipient in report.recipients}


def test_every_fixture_is_labelled() -> None:
    assert sorted(str(p.relative_to(DATA)) for p in DATA.glob("*/*.eml")) == sorted(LABELS)


@pytest.mark.parametrize("name", _params(KNOWN_MISSES))
def test_recipients_permanent_and_suppress(name: str) -> None:
    label = LABELS[name]
    found = _parsed(name)
    assert sorted(found) == sorted(label["recipients"])
    for address in label["recipients"]:
        assert found[address].permanent is label["permanent"], address
        assert found[address].suppress is label["suppress"], address


@pytest.mark.parametrize("name", _params(KNOWN_REASON_MISSES))
def test_reason(name: str) -> None:
    label = LABELS[name]
    found = _parsed(name)
    assert {found[a].reason for a in label["recipients"] if a in found} == {label["reason"]}


@pytest.mark.parametrize("name", _params(KNOWN_KIND_MISSES))
def test_kind(name: str) -> None:
    report = parse_message((DATA / name).read_bytes(), name)
    assert str(report.kind) == LABELS[name]["kind"]
