"""ARCHITECTURE.md names only what exists, and names every package there is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"

# `mailctl/delivery/`, `mailctl/sim/dsn.py`, `tests/test_architecture.py` ...
PATH = re.compile(r"^(?:mailctl|tests|bench|scripts|\.ci)(?:/[\w.\-]+)*/?$")
# `mailctl.config`, `mailctl.errors`: a module or a package, whichever it is today.
MODULE = re.compile(r"^mailctl(?:\.\w+)+$")


def _backticked() -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", DOC.read_text()))


def _module_exists(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_path_and_module_the_architecture_names_exists() -> None:
    names = _backticked()
    paths = sorted(name for name in names if PATH.match(name))
    modules = sorted(name for name in names if MODULE.match(name))
    assert "mailctl/delivery/" in paths and "mailctl.errors" in modules  # the patterns still match
    missing = [
        p for p in paths if not (ROOT / p).exists() or (p.endswith("/") and not (ROOT / p).is_dir())
    ]
    missing += [m for m in modules if not _module_exists(m)]
    assert missing == []


def test_the_architecture_names_every_package_and_top_level_module() -> None:
    # Named in backticks (checked above) or, for modules other work is still creating, in
    # plain text: either way a reader of the map finds every package.
    text = DOC.read_text()
    names = set(re.findall(r"mailctl[/.][\w/.]*\w", text))
    named = {name.rstrip("/") for name in names if PATH.match(name)}
    named |= {name.replace(".", "/") for name in names if MODULE.match(name)}
    package = ROOT / "mailctl"
    children = {
        f"mailctl/{child.name}"
        for child in package.iterdir()
        if child.is_dir() and (child / "__init__.py").is_file()
    }
    children |= {
        f"mailctl/{child.stem}"
        for child in package.glob("*.py")
        if child.stem not in {"__init__", "__main__"}
    }
    named_without_suffix = {name.removesuffix(".py") for name in named}
    assert sorted(children - named_without_suffix) == []
