"""Campaign YAML: what to send, read into a frozen, validated `Campaign`.

Imports mailctl.errors and the config package only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mailctl.config.nodes import Node, load_yaml
from mailctl.config.profiles import TrafficClass


@dataclass(frozen=True)
class CsvSource:
    path: Path
    email_column: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8-sig"


@dataclass(frozen=True)
class Campaign:
    name: str
    path: Path
    profile: str | None
    traffic_class: TrafficClass
    pool: str | None
    from_addr: str
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None
    csv: CsvSource | None
    list_name: str | None
    headers: Mapping[str, str]
    unsubscribe_url: str | None
    unsubscribe_mailto: str | None
    max_age: float | None = None

    def content(self) -> dict[str, Any]:
        """What the recipients see: a change to any of these after the start needs --update."""
        return {
            "from": self.from_addr,
            "reply_to": self.reply_to,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "headers": dict(self.headers),
            "unsubscribe_url": self.unsubscribe_url,
            "unsubscribe_mailto": self.unsubscribe_mailto,
        }

    @property
    def list_key(self) -> str:
        """The recipient list this campaign sends to (a CSV gets a list named after it)."""
        return self.list_name or f"campaign:{self.name}"


_CAMPAIGN_KEYS = {
    "name",
    "profile",
    "class",
    "pool",
    "from",
    "reply_to",
    "subject",
    "text",
    "html",
    "text_file",
    "html_file",
    "recipients",
    "list",
    "headers",
    "unsubscribe",
    "max_age",
}
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable, no colon
_RESERVED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-mailctl-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "dkim-signature",
    "feedback-id",
    "return-path",
    "reply-to",
}
_ADDRESS = re.compile(r"^(?:[^<>\r\n]*<[^<>@\s]+@[^<>@\s]+>|[^<>@\s]+@[^<>@\s]+)$")


def _template_text(keys: dict[str, Node], inline: str, file_key: str, base: Path) -> str | None:
    if inline in keys and file_key in keys:
        raise keys[file_key].error(f"give '{inline}' or '{file_key}', not both")
    if inline in keys:
        return keys[inline].str()
    if file_key in keys:
        path = base / keys[file_key].str()
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise keys[file_key].error(f"cannot read {path}: {exc}") from None
    return None


def load_campaign(path: Path) -> Campaign:
    root = load_yaml(path)
    keys = root.mapping(_CAMPAIGN_KEYS, required={"name", "from", "subject"})
    base = path.parent
    name = keys["name"].str()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise keys["name"].error(f"'{name}' must be letters, digits, '.', '_' or '-'")
    from_addr = keys["from"].str()
    if not _ADDRESS.match(from_addr):
        raise keys["from"].error(f"'{from_addr}' is not an address like 'Name <a@example.com>'")
    reply_to = keys["reply_to"].str() if "reply_to" in keys else None
    if reply_to is not None and not _ADDRESS.match(reply_to):
        raise keys["reply_to"].error(f"'{reply_to}' is not an address")
    text = _template_text(keys, "text", "text_file", base)
    html = _template_text(keys, "html", "html_file", base)
    if text is None and html is None:
        raise root.error("give a body: 'text', 'html', 'text_file' or 'html_file'")
    if ("recipients" in keys) == ("list" in keys):
        raise root.error("give exactly one of 'recipients' (a CSV file) or 'list' (a list name)")
    csv_source = None
    if "recipients" in keys:
        rnode = keys["recipients"]
        if isinstance(rnode.node, yaml.ScalarNode):
            csv_source = CsvSource(path=base / rnode.str())
        else:
            rk = rnode.mapping({"csv", "email_column", "delimiter", "encoding"}, required={"csv"})
            csv_source = CsvSource(
                path=base / rk["csv"].str(),
                email_column=rk["email_column"].str() if "email_column" in rk else None,
                delimiter=rk["delimiter"].str() if "delimiter" in rk else None,
                encoding=rk["encoding"].encoding() if "encoding" in rk else "utf-8-sig",
            )
    headers: dict[str, str] = {}
    if "headers" in keys:
        for header, value_node in keys["headers"].mapping().items():
            if not _HEADER_NAME.match(header):
                raise value_node.error(f"'{header}' is not a valid header name")
            if header.lower() in _RESERVED_HEADERS:
                raise value_node.error(f"header '{header}' is set by mailctl")
            value = value_node.str()
            if "\r" in value or "\n" in value:
                raise value_node.error("header values cannot contain line breaks")
            headers[header] = value
    url = mailto = None
    if "unsubscribe" in keys:
        un = keys["unsubscribe"].mapping({"url", "mailto"})
        if "url" in un:
            url = un["url"].str()
            if not re.match(r"^https?://[^\s/{}]+", url):
                raise un["url"].error(f"'{url}' is not an http(s) URL")
        if "mailto" in un:
            mailto = un["mailto"].str().removeprefix("mailto:")
            if not _ADDRESS.match(mailto) or "<" in mailto:
                raise un["mailto"].error(f"'{mailto}' is not an address")
    traffic_class = (
        keys["class"].choice(TrafficClass) if "class" in keys else TrafficClass.MARKETING
    )
    # A marketing campaign without `unsubscribe` may take its URL from the profile's
    # unsubscribe.base_url: delivery.campaigns.make_renderer checks once the profile is known.
    return Campaign(
        name=name,
        path=path,
        profile=keys["profile"].str() if "profile" in keys else None,
        traffic_class=traffic_class,
        pool=keys["pool"].str() if "pool" in keys else None,
        from_addr=from_addr,
        reply_to=reply_to,
        subject=keys["subject"].str(),
        text=text,
        html=html,
        csv=csv_source,
        list_name=keys["list"].str() if "list" in keys else None,
        headers=headers,
        unsubscribe_url=url,
        unsubscribe_mailto=mailto,
        max_age=keys["max_age"].duration() if "max_age" in keys else None,
    )
