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

# dma (DragonFly Mail Agent) writes a plain-text report with no DSN part and copies the failed
# recipient into the report's own X-Original-To header. The parser counts that header among the
# sender's own addresses, so the one candidate is excluded and the report comes out as unknown
# (with the header removed, all five parse right).
_DMA = "dma's report names the failed recipient in its own X-Original-To, taken as the sender's:"
_DMA_FILES = (
    "dma/authfailure.eml",
    "dma/mailboxfull.eml",
    "dma/norelaying.eml",
    "dma/userunknown-data.eml",
    "dma/userunknown-rcpt.eml",
)

# Fixture file -> what the parser misses on it (recipients, permanent or suppress).
KNOWN_MISSES: dict[str, str] = {name: f"{_DMA} no recipient found" for name in _DMA_FILES}

# Fixture file -> the reason the parser gives instead of the labelled one.
_DELAY = "a delay warning's 451 4.3.0 'Temporary lookup failure' read as networkerror, not expired"
KNOWN_REASON_MISSES: dict[str, str] = {
    **{name: f"{_DMA} no recipient, no reason" for name in _DMA_FILES},
    "exim/delayed.eml": _DELAY,
    "opensmtpd/delayed.eml": _DELAY,
    "postfix/delayed.eml": _DELAY,
    "sendmail/delayed.eml": _DELAY,
    "sendmail-mime/delayed.eml": _DELAY,
    "sendmail-mime/expired.eml": (
        "Action: failed, Status 4.4.7 with the 451 4.3.0 reply as diagnostic (the 4xx outlived"
        " the queue lifetime) read as networkerror, not expired"
    ),
    "postfix/expired.eml": (
        "Action: failed with a 4.3.0 Status (a 4xx that outlived the queue lifetime) read as"
        " networkerror from the 451 text, not expired"
    ),
    "exim/local-userunknown.eml": (
        "Exim's 'Unrouteable address' for a local user with no router read as hostunknown,"
        " not userunknown (suppress is right either way)"
    ),
}

# Fixture file -> how the parser gets the kind (bounce or delay warning) wrong.
KNOWN_KIND_MISSES: dict[str, str] = {
    **{name: f"{_DMA} kind unknown" for name in _DMA_FILES},
    "opensmtpd/expired.eml": (
        "OpenSMTPD's final expiry says Action: delayed, Status 4.4.7 but 'Envelope expired':"
        " parsed as a delay warning, not the final bounce"
    ),
}


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
