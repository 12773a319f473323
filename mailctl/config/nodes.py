"""YAML nodes that remember their file, line and key path, so every config error is one line.

``Node.error`` gives ``profiles.yaml:14: profiles.direct.pools.marketing[1]: '10.0.0.999' is not
an IPv4 or IPv6 address``; ``parse_duration`` reads the durations every config file uses.
Imports nothing from mailctl but errors.
"""

from __future__ import annotations

import builtins
import codecs
import datetime as dt
import difflib
import ipaddress
import math
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor

from mailctl.errors import ConfigError

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '9m', '1h30m', '3d' -> seconds. Bare numbers are seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos and text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"'{text}' is not a duration (use e.g. 30s, 9m, 2h, 3d)")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as `parse_duration` reads them, largest units first: 1800 -> '30m',
    5400 -> '1h30m', 90 -> '1m30s'; fractions of a second are kept ('0.5s')."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    left = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)


def unknown_key_message(key: str, allowed: set[str] | frozenset[str]) -> str:
    """'unknown key' with the nearest valid key as a suggestion (`subjet` -> `subject`), or the
    list of valid keys when none is close."""
    near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    if near:
        return f"unknown key '{key}' (did you mean '{near[0]}'?)"
    return f"unknown key '{key}' (valid keys: {', '.join(sorted(allowed))})"


class Node:
    """A YAML node with its file, line and key path, for precise error messages."""

    def __init__(self, file: str, node: yaml.Node, path: str) -> None:
        self.file = file
        self.node = node
        self.path = path

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, message: str) -> ConfigError:
        where = f"{self.path}: " if self.path else ""
        return ConfigError(
            f"{self.file}:{self.line}: {where}{message}",
            file=self.file,
            line=self.line,
            key=self.path or None,
        )

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def mapping(
        self,
        allowed: set[str] | None = None,
        required: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> dict[str, Node]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"expected a mapping, got {self.describe()}")
        result: dict[str, Node] = {}
        for key_node, value_node in self.node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise Node(self.file, key_node, self.path).error("keys must be plain strings")
            key = str(key_node.value)
            if allowed is not None and key not in allowed:
                raise Node(self.file, key_node, self._child_path(key)).error(
                    unknown_key_message(key, allowed)
                )
            if key in result:
                raise Node(self.file, key_node, self._child_path(key)).error("duplicate key")
            result[key] = Node(self.file, value_node, self._child_path(key))
        for key in sorted(required - result.keys()):
            raise self.error(f"missing required key '{key}'")
        return result

    def sequence(self) -> list[Node]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"expected a list, got {self.describe()}")
        return [
            Node(self.file, item, self._child_path(i)) for i, item in enumerate(self.node.value)
        ]

    def describe(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        return f"'{self.node.value}'"

    def scalar(self) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error(f"expected a single value, got {self.describe()}")
        try:
            return _construct_scalar(self.node)
        except (yaml.YAMLError, ValueError, OverflowError, TypeError) as exc:
            # "2026-02-30" resolves to a date that does not exist; a bad explicit tag.
            problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            value = str(self.node.value)[:80]
            raise self.error(f"'{value}' is not a valid value: {problem}") from None

    def str(self) -> str:
        value = self.scalar()
        if value is None or isinstance(value, bool | list | dict):
            raise self.error(f"expected a string, got {self.describe()}")
        return str(value)

    def int(self, minimum: int | None = None) -> int:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected a whole number, got {self.describe()}")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {value}")
        return value

    def number(self, minimum: float | None = None, maximum: float | None = None) -> float:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"expected a number, got {self.describe()}")
        if not math.isfinite(value):
            raise self.error(f"expected a finite number, got {self.describe()}")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(f"must be at most {maximum}, got {value}")
        return float(value)

    def bool(self) -> bool:
        value = self.scalar()
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {self.describe()}")
        return value

    def choice(self, enum: type[T]) -> T:
        text = self.str()
        try:
            return enum(text)  # type: ignore[call-arg]
        except ValueError:
            valid = "|".join(m.value for m in enum)  # type: ignore[attr-defined]
            raise self.error(f"'{text}' is not one of {valid}") from None

    def ip(self) -> builtins.str:
        text = self.str()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise self.error(f"'{text}' is not an IPv4 or IPv6 address") from None

    def duration(self) -> float:
        """A positive, finite number of seconds ('90s', '2h', 600)."""
        value = self.scalar()
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(self.str())
            except ValueError as exc:
                raise self.error(str(exc)) from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise self.error(
                f"must be a positive, finite duration (e.g. 30s, 9m, 2h), got {self.describe()}"
            )
        return seconds

    def encoding(self) -> builtins.str:
        """The name of a text encoding Python can read (utf-8, latin-1, cp1252 ...)."""
        name = self.str()
        try:
            info = codecs.lookup(name)
        except LookupError:
            info = None
        # rot13, base64 and the like are codecs too, but not text encodings.
        if info is None or not getattr(info, "_is_text_encoding", True):
            raise self.error(f"'{name}' is not a text encoding (e.g. utf-8, latin-1, cp1252)")
        return name

    def date(self) -> dt.date:
        if isinstance(self.node, yaml.ScalarNode):
            try:
                value = _construct_scalar(self.node)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                raise self.error(
                    f"'{str(self.node.value)[:40]}' is not a date (YYYY-MM-DD): {exc}"
                ) from None
        else:
            value = self.scalar()
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(self.str())
        except ValueError:
            raise self.error(f"'{value}' is not a date (YYYY-MM-DD)") from None

    def string_map(self) -> dict[builtins.str, builtins.str]:
        return {key: value.str() for key, value in self.mapping().items()}


def _construct_scalar(node: yaml.ScalarNode) -> Any:
    return SafeConstructor().construct_object(node, deep=True)


# libyaml's parser where PyYAML was built with it (the wheels are): the same events and
# nodes, with their marks, many times faster than the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Deeper than any real config, far below Python's recursion limit (the composer recurses).
MAX_DEPTH = 64
# Explicit tags a config may use; anything else (!!python/..., custom !tags) is refused.
_STANDARD_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
) | {"!"}


def _check_structure(path: Path, text: str) -> None:
    """Refuse explicit non-standard tags and deep nesting before composing: one pass over
    the parser's events, no recursion."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        line = event.start_mark.line + 1 if event.start_mark else 0
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _STANDARD_TAGS:
            raise ConfigError(
                f"{path}:{line}: YAML tag '{tag[:80]}' is not allowed (plain values only)",
                file=str(path),
                line=line or None,
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{path}:{line}: nested more than {MAX_DEPTH} levels deep",
                    file=str(path),
                    line=line or None,
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_yaml(path: Path) -> Node:
    """Parse a YAML file into a Node tree; syntax errors name their line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}", file=str(path)) from None
    try:
        _check_structure(path, text)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"{path}:{line}: YAML syntax error: {problem}", file=str(path), line=line or None
        ) from None
    except yaml.YAMLError as exc:  # e.g. a control character the YAML reader refuses
        problem = " ".join(str(exc).split())
        raise ConfigError(f"{path}: YAML error: {problem}", file=str(path)) from None
    if root is None:
        raise ConfigError(f"{path}:1: the file is empty", file=str(path), line=1)
    return Node(str(path), root, "")
