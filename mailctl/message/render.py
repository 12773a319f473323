"""Builds each message fast: templates compiled once, bytes assembled per recipient.

A MIME tree is never rebuilt per message (email.message costs about 1 ms each); the
structure is fixed per campaign and only the rendered parts are encoded and joined.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate, parseaddr
from typing import Any
from urllib.parse import quote

import jinja2
import jinja2.meta

from mailctl.config.campaign import Campaign
from mailctl.config.profiles import TrafficClass
from mailctl.errors import TemplateError
from mailctl.message.dkim import DkimKeyConfig
from mailctl.message.limits import (
    LimitedSandbox,
    TemplateLimitError,
    render_budget,
    render_limited,
)
from mailctl.message.tracking import TRACKING_HEADER, bounce_address, verp_address
from mailctl.unsubscribe.tokens import Signer, url_with_token

_CRLF = re.compile(r"[\r\n]+")
# The longest unsubscribe URL: it must fit one header line (998) with "List-Unsubscribe: <>".
_MAX_URL = 900


def _header_safe(value: str) -> str:
    """Field values never put a line break into a header."""
    return _CRLF.sub(" ", value).strip()


# RFC 5322 2.1.1: lines SHOULD stay within 78 characters and MUST within 998.
_FOLD_AT = 78
_LINE_LIMIT = 998


def encode_header_value(value: str, name: str = "Subject") -> str:
    """A header value that fits RFC 5322's line limits whatever its length.

    ASCII text is folded at its spaces; text that is not ASCII, or that has a run too long
    to fold (no space within 998 characters), becomes RFC 2047 encoded words, one per line.
    ``name`` is the field's name, which shares the first line.
    """
    value = _header_safe(value)
    if value.isascii():
        folded = _fold_ascii(value, len(name) + 2)
        if folded is not None:
            return folded
    return _encoded_words(value, len(name) + 2)


def _fold_ascii(value: str, first_line_taken: int) -> str | None:
    """Fold at spaces into lines of at most 78 characters where the words allow (never
    over 998); None when a single word is too long to fit any line."""
    if first_line_taken + len(value) <= _FOLD_AT:
        return value
    lines: list[str] = []
    line = ""
    taken = first_line_taken
    for word in value.split(" "):
        if taken + len(word) + 1 > _LINE_LIMIT:
            return None
        if line and taken + len(line) + 1 + len(word) > _FOLD_AT:
            lines.append(line)
            line, taken = word, 1  # a continuation line starts with one space
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\r\n ".join(lines)


def _encoded_words(value: str, first_line_taken: int = 0) -> str:
    raw = value.encode("utf-8")
    words = []
    # 45 bytes -> 60 base64 chars: each encoded word stays under 75 characters; the first
    # shares its line with the field name, so it carries less.
    room = (_FOLD_AT - first_line_taken - len("=?utf-8?b??=")) // 4 * 3
    chunk = max(12, min(45, room))
    start = 0
    while start < len(raw):
        end = min(start + chunk, len(raw))
        chunk = 45
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # never split a UTF-8 sequence
            end -= 1
        words.append("=?utf-8?b?" + base64.b64encode(raw[start:end]).decode("ascii") + "?=")
        start = end
    return "\r\n ".join(words)


_PERCENT_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")


def url_value(value: Any) -> str:
    """A template value as it goes into a URL: percent-encoded, so a recipient's address or
    field (a quoted local part with ``>``, ``,`` or spaces) can never end the URL in a
    header or add another. Escapes already there (``{{ email | urlencode }}``) are kept."""
    if value is None:
        return ""
    return "".join(
        piece if _PERCENT_ESCAPE.fullmatch(piece) else quote(piece, safe="/")
        for piece in _PERCENT_ESCAPE.split(str(value))
    )


def _plain(ast: jinja2.nodes.Template) -> bool:
    """A template that is text only: every node literal output (no variable, no tag)."""
    return all(
        isinstance(node, jinja2.nodes.Output)
        and all(isinstance(child, jinja2.nodes.TemplateData) for child in node.nodes)
        for node in ast.body
    )


def encode_address_header(value: str) -> str:
    name, address = parseaddr(value)
    if not name:
        return address
    if name.isascii():
        if re.search(r'[()<>\[\]:;@\\,."]', name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{address}>"
    return f"{encode_header_value(name)} <{address}>"


def _encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body): 7bit when it already is, else quoted-printable."""
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    if body.isascii() and (len(body) < 999 or max(map(len, body.split("\n"))) < 999):
        return "7bit", body.replace("\n", "\r\n").encode("ascii")
    encoded = binascii.b2a_qp(body.encode("utf-8"), istext=True)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


class _Date:
    """formatdate() once per second, not once per message."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = formatdate(now, localtime=False).replace("-0000", "+0000")
        return self._value


@dataclass(frozen=True)
class LinkSigning:
    """What signed unsubscribe links need: the secret, the list and how long links live."""

    secret: bytes
    list_name: str
    valid_for: float

    def __repr__(self) -> str:  # never show the secret
        return f"LinkSigning(list_name={self.list_name!r}, valid_for={self.valid_for!r})"


@dataclass(frozen=True)
class RenderedMessage:
    tracking_id: str
    envelope_from: str
    recipient: str
    data: bytes


class Renderer:
    """A campaign's compiled templates and fixed headers."""

    def __init__(
        self,
        campaign: Campaign,
        *,
        bounce_domain: str | None = None,
        verp: bool = False,
        dkim: DkimKeyConfig | None = None,
        unsubscribe: LinkSigning | None = None,
        unsubscribe_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.campaign = campaign
        self.unsubscribe = unsubscribe
        self._signer = Signer(unsubscribe.secret) if unsubscribe else None
        # A URL without template fields is a base URL: the signed token is appended to it.
        self._base_url = (
            campaign.unsubscribe_url
            if campaign.unsubscribe_url and "{" not in campaign.unsubscribe_url
            else None
        )
        self.unsubscribe_base_url = unsubscribe_base_url  # the profile's, for spec()
        if campaign.unsubscribe_url is None and unsubscribe_base_url:
            self._base_url = unsubscribe_base_url
        self.clock = clock
        self.dkim = dkim
        self.signer: Callable[[bytes], bytes] | None = None
        if dkim is not None:
            from mailctl.message.dkim import DkimSigner

            self.signer = DkimSigner(dkim, clock=clock).sign
        _, from_address = parseaddr(campaign.from_addr)
        self.from_domain = from_address.rpartition("@")[2].lower()
        self.bounce_domain = bounce_domain
        self.verp = verp
        self.plain_from = from_address
        # Sandboxed, with limits on time, size and range (message.limits).
        text_env = LimitedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
        html_env = LimitedSandbox(undefined=jinja2.StrictUndefined, autoescape=True)
        # The unsubscribe URL goes into a header: every value is URL-encoded on the way in.
        url_env = LimitedSandbox(
            undefined=jinja2.StrictUndefined, autoescape=False, finalize=url_value
        )
        self._templates: dict[str, jinja2.Template] = {}
        # Parts that are plain text (no tag, no variable), rendered once: a fixed subject.
        self._constant: dict[str, str] = {}
        self.required_fields: set[str] = set()
        sources = {
            "subject": (text_env, campaign.subject),
            "text": (text_env, campaign.text),
            "html": (html_env, campaign.html),
            "unsubscribe_url": (
                url_env,
                None if self._base_url is not None else campaign.unsubscribe_url,
            ),
        }
        for part, (env, source) in sources.items():
            if source is None:
                continue
            try:
                ast = env.parse(source)
                self._templates[part] = env.from_string(ast)
                if _plain(ast):
                    self._constant[part] = render_limited(self._templates[part], {})
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"{campaign.path}: {part} template line {exc.lineno}: {exc.message}"
                ) from None
            self.required_fields |= jinja2.meta.find_undeclared_variables(ast)
        self.required_fields -= {"email", "unsubscribe_url", "unsubscribe_token", "campaign"}
        self._date = _Date()
        self._boundary = "=_mailctl_" + base64.b32encode(os.urandom(10)).decode("ascii").lower()
        self._fixed = self._fixed_headers()

    def spec(self) -> dict[str, Any]:
        """What another process needs to build the same renderer (see delivery.claim.RenderPool)."""
        return {
            "bounce_domain": self.bounce_domain,
            "verp": self.verp,
            "dkim": self.dkim,
            "unsubscribe": self.unsubscribe,
            "unsubscribe_base_url": self.unsubscribe_base_url,
        }

    def unsubscribe_token(self, recipient: str) -> str | None:
        """The signed token for this recipient, good for the profile's `valid_for` (counted
        from the start of today, so a day's messages carry the same link)."""
        if self._signer is None or self.unsubscribe is None:
            return None
        day_start = int(self.clock()) // 86400 * 86400
        return self._signer.token(
            recipient,
            self.campaign.name,
            self.unsubscribe.list_name,
            day_start + self.unsubscribe.valid_for,
        )

    def _fixed_headers(self) -> str:
        c = self.campaign
        lines = [f"From: {encode_address_header(c.from_addr)}"]
        if c.reply_to:
            lines.append(f"Reply-To: {encode_address_header(c.reply_to)}")
        for name, value in c.headers.items():
            lines.append(f"{name}: {encode_header_value(value, name)}")
        # Gmail's feedback loop reports complaint rates per these fields (campaign:class:
        # mailer:sender); it must be covered by the DKIM signature to count.
        lines.append(f"Feedback-ID: {c.name}:{c.traffic_class.value}:mailctl:{self.from_domain}")
        lines.append("MIME-Version: 1.0")
        return "\r\n".join(lines) + "\r\n"

    def missing_fields(self, fields: Mapping[str, Any]) -> list[str]:
        """Template fields this recipient lacks: checked before sending starts."""
        return sorted(name for name in self.required_fields if name not in fields)

    def envelope_from(self, tracking_id: str) -> str:
        if self.bounce_domain and self.verp:
            return verp_address(tracking_id, self.bounce_domain)
        if self.bounce_domain:
            return bounce_address(self.bounce_domain)
        return self.plain_from

    def _part(self, part: str, context: dict[str, Any]) -> str:
        constant = self._constant.get(part)
        if constant is not None:
            return constant
        return render_limited(self._templates[part], context)

    def render(
        self, recipient: str, fields: Mapping[str, Any], tracking_id: str
    ) -> RenderedMessage:
        context = dict(fields)
        context["email"] = recipient
        context["campaign"] = self.campaign.name
        token = self.unsubscribe_token(recipient)
        context["unsubscribe_token"] = token or ""
        templates = self._templates
        try:
            with render_budget():
                unsubscribe_url: str | None
                if self._base_url is not None:
                    unsubscribe_url = (
                        url_with_token(self._base_url, token) if token else self._base_url
                    )
                else:
                    unsubscribe_url = (
                        self._part("unsubscribe_url", context)
                        if "unsubscribe_url" in templates
                        else None
                    )
                if unsubscribe_url is not None:
                    unsubscribe_url = _header_safe(unsubscribe_url)
                context["unsubscribe_url"] = unsubscribe_url or ""
                subject = self._part("subject", context)
                text = self._part("text", context) if "text" in templates else None
                html = self._part("html", context) if "html" in templates else None
        except TemplateLimitError as exc:
            raise TemplateError(f"recipient {recipient}: template limit: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"recipient {recipient}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"recipient {recipient}: template error: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a filter failing on this recipient's data
            raise TemplateError(
                f"recipient {recipient}: template failed: {type(exc).__name__}: {exc}"
            ) from None
        if unsubscribe_url is not None and len(unsubscribe_url) > _MAX_URL:
            raise TemplateError(
                f"recipient {recipient}: the unsubscribe URL is {len(unsubscribe_url)}"
                f" characters; at most {_MAX_URL} fit in a header line"
            )
        headers = [
            f"Date: {self._date(self.clock())}\r\n",
            self._fixed,
            f"To: {recipient}\r\n",
            f"Subject: {encode_header_value(subject)}\r\n",
            f"Message-ID: <{tracking_id}@{self.from_domain}>\r\n",
            f"{TRACKING_HEADER}: {tracking_id}\r\n",
        ]
        if self.campaign.traffic_class is TrafficClass.MARKETING or unsubscribe_url:
            uris = []
            if unsubscribe_url:
                uris.append(f"<{unsubscribe_url}>")
            if self.campaign.unsubscribe_mailto:
                # The token in the subject ties a reply to its recipient (bounces.optout).
                subject_param = f"unsubscribe%20{token}" if token else "unsubscribe"
                uris.append(f"<mailto:{self.campaign.unsubscribe_mailto}?subject={subject_param}>")
            if uris:
                headers.append("List-Unsubscribe: " + ",\r\n ".join(uris) + "\r\n")
            if unsubscribe_url and unsubscribe_url.startswith("https://"):
                headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        if text is not None and html is not None:
            boundary = self._boundary
            text_cte, text_body = _encode_body(text)
            html_cte, html_body = _encode_body(html)
            if boundary.encode() in text_body or boundary.encode() in html_body:
                boundary = "=_mailctl_" + base64.b32encode(os.urandom(10)).decode().lower()
            headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n')
            b = boundary.encode("ascii")
            body = b"".join(
                (
                    b"\r\n--",
                    b,
                    b"\r\nContent-Type: text/plain; charset=utf-8\r\n",
                    b"Content-Transfer-Encoding: ",
                    text_cte.encode(),
                    b"\r\n\r\n",
                    text_body,
                    b"\r\n--",
                    b,
                    b"\r\nContent-Type: text/html; charset=utf-8\r\n",
                    b"Content-Transfer-Encoding: ",
                    html_cte.encode(),
                    b"\r\n\r\n",
                    html_body,
                    b"\r\n--",
                    b,
                    b"--\r\n",
                )
            )
        else:
            subtype = "plain" if text is not None else "html"
            cte, encoded = _encode_body(text if text is not None else html or "")
            headers.append(f"Content-Type: text/{subtype}; charset=utf-8\r\n")
            headers.append(f"Content-Transfer-Encoding: {cte}\r\n")
            body = b"\r\n" + encoded
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
        data = "".join(headers).encode("utf-8") + body
        if self.signer is not None:
            try:
                data = self.signer(data) + data
            except Exception as exc:  # noqa: BLE001 - never send it unsigned; fail this one
                raise TemplateError(
                    f"recipient {recipient}: DKIM signing failed: {type(exc).__name__}"
                ) from None
        return RenderedMessage(tracking_id, self.envelope_from(tracking_id), recipient, data)
