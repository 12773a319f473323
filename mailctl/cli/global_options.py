"""The global options' values (`--db`, `--profiles`, `--debug`): set by the root callback,
read by the command groups (through `context.py`).

Part of the CLI. Imports only the standard library: the root imports it, and `mailctl --help`
must not pay for the store or the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Globals:
    db: str | None = None
    profiles: Path | None = None
    debug: bool = False


state = Globals()
