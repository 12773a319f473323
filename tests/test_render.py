"""Message rendering: correct MIME, safe headers, VERP, strict templates."""

from __future__ import annotations

import email
import textwrap
from email import policy
from pathlib import Path

import pytest

from mailctl.config.campaign import load_campaign
from mailctl.errors import TemplateError
from mailctl.message.render import Renderer
from mailctl.message.tracking import TRACKING_RE, new_tracking_id


def campaign(tmp_path: Path, body: str, **extra: str) -> Path:
    text = (
        textwrap.dedent(
            """\
        name: t
        from: "Zoë's Shop <news@shop.example>"
        subject: "{{ subject_line }}"
        list: x
        """
        )
        + body
        + "".join(f"{k}: {v}\n" for k, v in extra.items())
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def test_crlf_in_fields_never_reaches_a_header(tmp_path: Path) -> None:
    path = campaign(tmp_path, 'text: "x"\nclass: transactional\n')
    renderer = Renderer(load_campaign(path))
    evil = "Hello\r\nBcc: victim@example.org\r\n\r\nInjected body"
    message = renderer.render("a@example.com", {"subject_line": evil}, new_tracking_id())
    head = message.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head
    parsed = parse(message.data)
    assert parsed["Bcc"] is None
    assert str(parsed["Subject"]) == "Hello Bcc: victim@example.org Injected body"


def test_text_only_transactional_has_no_list_unsubscribe(tmp_path: Path) -> None:
    path = campaign(tmp_path, 'text: "Your code is {{ code }}"\nclass: transactional\n')
    message = Renderer(load_campaign(path)).render(
        "a@example.com", {"subject_line": "Code", "code": "123456"}, new_tracking_id()
    )
    parsed = parse(message.data)
    assert parsed.get_content_type() == "text/plain"
    assert parsed["List-Unsubscribe"] is None
    assert parsed.get_content().strip() == "Your code is 123456"


def test_utf8_bodies_long_subjects_and_html_escaping(tmp_path: Path) -> None:
    path = campaign(
        tmp_path,
        'html: "<p>{{ name }}</p>"\ntext: "Grüße {{ name }} ' + "é" * 300 + '"\n'
        'unsubscribe: {url: "https://shop.example/u"}\n',
    )
    renderer = Renderer(load_campaign(path))
    subject = "Größte Auswahl — " * 8
    message = renderer.render(
        "a@example.com", {"subject_line": subject, "name": "<b>Ann</b>"}, new_tracking_id()
    )
    assert all(len(line) <= 998 for line in message.data.split(b"\r\n"))
    assert message.data.isascii()
    parsed = parse(message.data)
    assert str(parsed["Subject"]) == subject.strip()
    assert str(parsed["From"]) == "Zoë's Shop <news@shop.example>"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>&lt;b&gt;Ann&lt;/b&gt;</p>"
    assert parsed.get_body(("plain",)).get_content().startswith("Grüße <b>Ann</b> ééé")


def test_tracking_id_message_id_and_verp(tmp_path: Path) -> None:
    path = campaign(tmp_path, 'text: "x"\nclass: transactional\n')
    loaded = load_campaign(path)
    ids = {new_tracking_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(TRACKING_RE.fullmatch(i) for i in ids)
    tracking = new_tracking_id()
    plain = Renderer(loaded).render("a@example.com", {"subject_line": "s"}, tracking)
    assert plain.envelope_from == "news@shop.example"
    parsed = parse(plain.data)
    assert str(parsed["Message-ID"]) == f"<{tracking}@shop.example>"
    assert str(parsed["X-Mailctl-ID"]) == tracking
    assert str(parsed["Feedback-ID"]) == "t:transactional:mailctl:shop.example"
    verp = Renderer(loaded, bounce_domain="bounces.shop.example", verp=True)
    assert verp.render("a@example.com", {"subject_line": "s"}, tracking).envelope_from == (
        f"bounces+{tracking}@bounces.shop.example"
    )


def test_missing_field_and_syntax_errors(tmp_path: Path) -> None:
    path = campaign(tmp_path, 'text: "Hi {{ first_name }}"\nclass: transactional\n')
    renderer = Renderer(load_campaign(path))
    assert renderer.required_fields == {"subject_line", "first_name"}
    assert renderer.missing_fields({"subject_line": "x"}) == ["first_name"]
    with pytest.raises(TemplateError, match="first_name"):
        renderer.render("a@example.com", {"subject_line": "x"}, new_tracking_id())
    broken = campaign(tmp_path, 'text: "Hi {{ first_name "\nclass: transactional\n')
    with pytest.raises(TemplateError, match="text template line 1"):
        Renderer(load_campaign(broken))


def test_sandbox_blocks_unsafe_template_code(tmp_path: Path) -> None:
    path = campaign(
        tmp_path, 'text: "{{ subject_line.__class__.__mro__ }}"\nclass: transactional\n'
    )
    renderer = Renderer(load_campaign(path))
    with pytest.raises(TemplateError):
        renderer.render("a@example.com", {"subject_line": "x"}, new_tracking_id())
