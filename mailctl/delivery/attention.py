"""Whether a send run ended with mail that only the operator can get moving again.

Cron must never fail silently: a wrong relay password, TLS required but not offered, a relay
unreachable for the whole run, or a campaign stopped by a circuit breaker or by a refusal of
the sender all leave mail undelivered until someone acts. `attention` turns what the run saw
into one line saying so; the CLI prints it (even with --quiet) and exits with
`mailctl.errors.NeedsOperator`'s code (3). A receiver that merely throttles or defers
is not such a reason.

Pure: no I/O. Imports only the transport's fault names. Must not import the CLI.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mailctl.delivery.transport import SenderFault


@dataclass
class SenderFaults:
    """Sending-side failures of a run toward relays, and whether any server answered."""

    counts: Counter[str] = field(default_factory=Counter)
    last: dict[str, str] = field(default_factory=dict)  # fault -> the last reply about it
    answered: int = 0  # replies from a server (any code), relays and MX hosts alike

    def add(self, fault: str, reply: str | None) -> None:
        self.counts[fault] += 1
        if reply:
            self.last[fault] = reply


def attention(faults: SenderFaults, stopped: dict[str, str], *, sent: int = 0) -> str | None:
    """One line naming what the operator must fix, or None when the run needs nobody.

    ``stopped`` maps each campaign a breaker or a sender-scoped refusal stopped to why.
    """
    if faults.counts[SenderFault.AUTH]:
        return (
            f"the relay refused authentication ({faults.last.get(SenderFault.AUTH, '?')}); "
            f"{faults.counts[SenderFault.AUTH]} attempts refused: fix the username or password"
            + _resume(stopped)
        )
    if faults.counts[SenderFault.TLS]:
        return (
            f"TLS is required but failed ({faults.last.get(SenderFault.TLS, '?')}); "
            f"{faults.counts[SenderFault.TLS]} attempts failed: fix the relay's TLS or the "
            "profile's tls settings" + _resume(stopped)
        )
    if stopped:
        name, why = next(iter(stopped.items()))
        more = f" (and {len(stopped) - 1} more)" if len(stopped) > 1 else ""
        return f"campaign {name} stopped{more}: {why}; fix it" + _resume(stopped)
    if faults.counts[SenderFault.CONNECT] and not faults.answered and not sent:
        return (
            "the relay was unreachable for the whole run "
            f"({faults.last.get(SenderFault.CONNECT, '?')}); "
            f"{faults.counts[SenderFault.CONNECT]} attempts failed: check its host and port"
        )
    return None


def _resume(stopped: dict[str, str]) -> str:
    if not stopped:
        return ""
    return ", then " + " and ".join(f"`mailctl campaign resume {name}`" for name in stopped)
