"""Templates have limits: a render time budget per message, a cap on output size, a bounded
range. Going past one fails that message with the reason and never hangs the run."""

from __future__ import annotations

import re
import sqlite3
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailctl.config.campaign import load_campaign
from mailctl.errors import TemplateError
from mailctl.message.render import Renderer
from mailctl.message.tracking import new_tracking_id
from tests.helpers.workspace import make_workspace, send_json
from tests.hostile_smtp import HostileServer, Script

NESTED_RANGES = "{% for x in range(99999) %}{% for y in range(99999) %}{% endfor %}{% endfor %}"
SLOW_LOOPS = "{% for x in range(9999) %}{% for y in range(9999) %}{% endfor %}{% endfor %}"
STRING_LOOPS = "{% for x in 'a' * 100000 %}{% for y in 'a' * 100000 %}{% endfor %}{% endfor %}"


def renderer(tmp_path: Path, text: str) -> Renderer:
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: t
        from: "Shop <news@shop.example>"
        subject: "Hi"
        list: x
        class: transactional
        """)
        + f"text: {text!r}\n"
    )
    return Renderer(load_campaign(path))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "{{ 'a' * 10**9 }}",
            "the template would make 1000000000 characters (the limit is 1048576)",
        ),
        ("{{ 'a' | center(10**9) }}", "the template would make 1000000000 characters"),
        ("{{ 'a'.ljust(10**9) }}", "the template would make 1000000000 characters"),
        ("{{ '%0999999999d' % 1 }}", "a %-format width over the output limit"),
        (NESTED_RANGES, "range() of 99999 items (the limit is 10000)"),
        (SLOW_LOOPS, "rendering took over 0.5 s (the render budget)"),
        (STRING_LOOPS, "rendering took over 0.5 s (the render budget)"),
        (
            "{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}",
            "the template would make 1049000 characters (the limit is 1048576)",
        ),
    ],
    ids=["multiply", "center", "ljust", "format-width", "range", "time", "string-loops", "output"],
)
def test_a_template_past_a_limit_fails_that_message_quickly(
    tmp_path: Path, text: str, reason: str
) -> None:
    render = renderer(tmp_path, text)
    started = time.monotonic()
    with pytest.raises(TemplateError) as raised:
        render.render("a@example.com", {}, new_tracking_id())
    assert time.monotonic() - started < 2
    assert str(raised.value).startswith(f"recipient a@example.com: template limit: {reason}")


def test_an_ordinary_template_renders_as_before(tmp_path: Path) -> None:
    render = renderer(tmp_path, "{% for i in range(3) %}{{ i * 2 }},{% endfor %} {{ 2 ** 10 }}")
    message = render.render("a@example.com", {}, new_tracking_id())
    assert b"0,2,4, 1024" in message.data


def test_a_runaway_template_fails_its_messages_and_the_run_ends(
    hostile_server: Callable[[Script], HostileServer], tmp_path: Path, capsys
) -> None:
    server = hostile_server(Script())
    ws = make_workspace(tmp_path, server.port, rows=3)
    campaign = (ws / "c.yaml").read_text()
    (ws / "c.yaml").write_text(re.sub(r"(?m)^text: .*$", f"text: {SLOW_LOOPS!r}", campaign))
    started = time.monotonic()
    result = send_json(ws, capsys)
    assert time.monotonic() - started < 15
    assert (result["sent"], result["failed"]) == (0, 3)
    assert server.messages == []
    conn = sqlite3.connect(ws / "m.db")
    replies = conn.execute("SELECT state, reason, last_reply FROM messages").fetchall()
    conn.close()
    assert {(state, reason) for state, reason, _ in replies} == {("failed", "template")}
    assert all(
        "template limit: rendering took over 0.5 s (the render budget)" in reply
        for _, _, reply in replies
    )
