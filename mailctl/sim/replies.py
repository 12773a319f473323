"""The reply texts a simulated provider answers with.

Owns :class:`SimReply` (a server-side reply template with ``{ip}``/``{rcpt}`` placeholders) and
the real reply texts of Google, Microsoft and Yahoo as named constants (see PROVIDERS.md), so
presets and tests name the same text. (Not the delivery package's ``Reply``, which is a reply
a client received.)

Must not import anything from mailctl: it is the bottom of the sim package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class SimReply:
    """An SMTP reply; ``text`` may name ``{ip}``, ``{rcpt}``, ``{sender}``, ``{minutes}``."""

    code: int
    text: str = ""

    def render(self, **values: str) -> str:
        """The reply line, placeholders filled (unknown placeholders are left as they are)."""
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.text)
        return f"{self.code} {text}" if text else str(self.code)

    @property
    def closes_connection(self) -> bool:
        # RFC 5321: 421 means the server is closing the transmission channel.
        return self.code == 421

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) in the text, or one derived from the class."""
        found = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        if found:
            return found.group(1)
        return f"{self.code // 100}.0.0"


# Reply texts from PROVIDERS.md (IPs as {ip}); kept as constants so tests can name them.
GOOGLE_RATE_LIMITED = SimReply(
    421,
    "4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail originating "
    "from your IP address. To protect our users from spam, mail sent from your IP address has "
    "been temporarily rate limited. Please visit "
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email "
    "Senders Guidelines. - gsmtp",
)
GOOGLE_NO_SUCH_USER = SimReply(
    550,
    "5.1.1 The email account that you tried to reach does not exist. Please try "
    "double-checking the recipient's email address for typos or unnecessary spaces. "
    "Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp",
)
GOOGLE_DISABLED_USER = SimReply(
    550,
    "5.2.1 The email account that you tried to reach is disabled. "
    "Learn more at https://support.google.com/mail/?p=DisabledUser - gsmtp",
)
GOOGLE_OVER_QUOTA_TEMP = SimReply(
    452,
    "4.2.2 The email account that you tried to reach is over quota. Please direct the "
    "recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
)
GOOGLE_RECEIVING_RATE = SimReply(
    450,
    "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
    "additional messages from being delivered. Please resend your message at a later point. "
    "Learn more at https://support.google.com/mail/?p=ReceivingRate - gsmtp",
)
GOOGLE_UNSOLICITED = SimReply(
    550,
    "5.7.1 [{ip}] Our system has detected that this message is likely unsolicited mail. To "
    "reduce the amount of spam sent to Gmail, this message has been blocked. Learn more at "
    "https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp",
)
GOOGLE_TEMPORARILY_REJECTED = SimReply(
    451, "4.3.0 Mail server temporarily rejected message. - gsmtp"
)

YAHOO_TSS04 = SimReply(
    421,
    "4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
)
YAHOO_TS03 = SimReply(
    421,
    "4.7.1 [TS03] All messages from {ip} will be permanently deferred; Retrying will NOT succeed.",
)
YAHOO_NO_SUCH_USER = SimReply(554, "delivery error: dd This user doesn't have a yahoo.com account")
YAHOO_MAILBOX_DISABLED = SimReply(
    554,
    "delivery error: dd Sorry, your message to {rcpt} cannot be delivered. "
    "This mailbox is disabled (554.30).",
)
YAHOO_DEFERRED = SimReply(451, "Message temporarily deferred - [170]")
YAHOO_POLICY = SimReply(554, "Message not allowed - [PH01] Email not accepted for policy reasons.")

MICROSOFT_RATE_LIMITED = SimReply(
    451,
    "4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. "
    "For e-mail delivery information, see https://postmaster.live.com (S775)",
)
MICROSOFT_BLOCK_LIST = SimReply(
    550,
    "5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet "
    "service provider since part of their network is on our block list (S3150).",
)
MICROSOFT_SERVER_BUSY = SimReply(
    451, "4.7.500 Server busy. Please try again later from [{ip}]. (S77719)"
)
MICROSOFT_TOO_MANY_CONNECTIONS = SimReply(
    421,
    "4.3.2 The maximum number of concurrent connections per resource forest has exceeded a "
    "limit, closing transmission channel",
)
MICROSOFT_MAILBOX_UNAVAILABLE = SimReply(
    550, "5.5.0 Requested action not taken: mailbox unavailable"
)

GENERIC_UNTRUSTED_IP = SimReply(
    451, "4.7.1 Received too many messages from a new or untrusted IP: {ip}"
)
GENERIC_USER_UNKNOWN = SimReply(550, "5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
GENERIC_MAILBOX_FULL = SimReply(452, "4.2.2 <{rcpt}>: Recipient address rejected: Mailbox full")
GREYLISTED = SimReply(
    451, "4.7.1 <{rcpt}>: Recipient address rejected: Greylisted for {minutes} minutes"
)
TRY_AGAIN_LATER = SimReply(421, "4.7.0 Try again later")
TOO_MANY_CONNECTIONS = SimReply(421, "Too many connections")
MAX_MESSAGES_PER_CONNECTION = SimReply(
    421, "Max message per connection reached, closing transmission channel"
)
ACCEPTED = SimReply(250, "2.0.0 OK queued as {queue_id}")
# Answer to a failure inside the sim itself; transient so a client retries rather than bounces.
INTERNAL_ERROR = SimReply(451, "4.3.0 Simulated provider internal error")
