"""Untrusted text made safe to show in one line: control characters out, length capped.

CSV cells, addresses, SMTP replies and file names may hold line breaks and ANSI escape
sequences; anything that echoes them in a message or on a terminal passes them through
`printable` first (Rich markup is a separate matter: the CLI prints such text as `Text`,
never as markup). Standard library only; imports nothing of mailctl.
"""

from __future__ import annotations


def printable(value: object, limit: int = 260) -> str:
    """``value`` as text with every control character (line breaks, ESC, NUL ...) as ``?``
    and cut at ``limit`` characters (with an ellipsis)."""
    text = str(value)
    head = text[: limit + 1]
    if not head.isprintable():  # the common case (a plain reply) costs one scan, no copy
        head = "".join(ch if ch.isprintable() else "?" for ch in head)
    return head if len(head) <= limit else head[:limit] + "…"
