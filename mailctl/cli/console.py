"""The two consoles: data on stdout, messages and progress on stderr.

Only this module and the command modules in mailctl/cli print. Library code reports
progress through callbacks.

Messages are events: one event is one line on stderr, never wrapped (cron mail and log files
get whole lines; a terminal wraps them itself). With `--log-format json` (or `MAILCTL_LOG=json`)
each event is one JSON object instead: `{"time", "level", "message"}` plus any fields, for log
shippers. Data on stdout (tables, `--json`) is unchanged by the log format.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class _PlainConsole(Console):
    """A console that never reads markup and never passes a control character through.

    Everything mailctl prints may hold untrusted text (CSV fields, addresses, reply texts,
    file names): ``[/]`` must print as it is, and an ANSI escape must not reach the
    terminal. Styles are given as ``style=`` or as ``Text`` spans, never as markup.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs["markup"] = False
        return super().render_str(_CONTROL.sub("?", text), **kwargs)


out = _PlainConsole(highlight=False, soft_wrap=False, markup=False)
if not out.is_terminal:
    out.width = 160  # tables in files and pipes: wide enough not to wrap every cell
err = _PlainConsole(stderr=True, highlight=False, markup=False)

_quiet = False
LOG_FORMATS = ("text", "json")
_log_format = "text"


def set_log_format(log_format: str) -> None:
    """`text` (default) or `json`: how messages and progress lines are written on stderr."""
    global _log_format
    if log_format not in LOG_FORMATS:
        raise ValueError(f"'{log_format}' is not a log format ({', '.join(LOG_FORMATS)})")
    _log_format = log_format


def log_format() -> str:
    return _log_format


def live_display() -> bool:
    """Whether progress may redraw in place: stderr is a terminal and events are text."""
    return not _quiet and _log_format == "text" and err.is_terminal


def event(message: str, *, level: str = "info", style: str | None = None, **fields: Any) -> None:
    """One event on stderr: a whole line of text (`style` on a terminal) or a JSON object."""
    if _log_format == "json":
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "message": message,
            **fields,
        }
        sys.stderr.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        sys.stderr.flush()
        return
    err.print(message, style=style, markup=False, highlight=False, soft_wrap=True)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def emit_json(obj: Any) -> None:
    """Machine output: one JSON document on stdout, never wrapped or coloured."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")


def log_json_line(record: Any) -> None:
    """One structured log record (a service's access log) as a JSON line on stderr."""
    sys.stderr.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
    sys.stderr.flush()


def info(message: str) -> None:
    if not _quiet:
        event(message)


def warn(message: str) -> None:
    if _log_format == "json":
        event(message, level="warning")
    else:
        event(f"Warning: {message}", style="yellow")


def error(message: str) -> None:
    if _log_format == "json":
        event(message, level="error")
    else:
        event(f"Error: {message}", style="bold red")
