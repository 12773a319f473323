"""Reads profiles.yaml and campaign YAML into frozen, validated objects.

Every error names the file, the line and the key path, in one line::

    profiles.yaml:14: profiles.direct.pools.marketing[1]: '10.0.0.999' is not an IPv4 or
    IPv6 address
"""

from __future__ import annotations

import builtins
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mailctl.errors import ConfigError
from mailctl.warmup_schedule import PRESET_NAMES, WarmupSetting

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
                hint = ", ".join(sorted(allowed))
                raise Node(self.file, key_node, self._child_path(key)).error(
                    f"unknown key '{key}' (valid keys: {hint})"
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
        return _construct_scalar(self.node)

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
        value = self.scalar()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return parse_duration(self.str())
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def date(self) -> dt.date:
        value = self.scalar()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(self.str())
        except ValueError:
            raise self.error(f"'{value}' is not a date (YYYY-MM-DD)") from None

    def string_map(self) -> dict[builtins.str, builtins.str]:
        return {key: value.str() for key, value in self.mapping().items()}


def _construct_scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_yaml(path: Path) -> Node:
    """Parse a YAML file into a Node tree; syntax errors name their line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}", file=str(path)) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"{path}:{line}: YAML syntax error: {problem}", file=str(path), line=line or None
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}", file=str(path)) from None
    if root is None:
        raise ConfigError(f"{path}:1: the file is empty", file=str(path), line=1)
    return Node(str(path), root, "")


# --------------------------------------------------------------------------- profiles


class TransportKind(StrEnum):
    SANDBOX = "sandbox"
    RELAY = "relay"
    DIRECT = "direct"


class TlsMode(StrEnum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"


class TrafficClass(StrEnum):
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


@dataclass(frozen=True)
class SendingIp:
    ip: str
    helo: str | None = None
    warmup: WarmupSetting | None = None


@dataclass(frozen=True)
class DkimKeyRef:
    domain: str
    selector: str
    key_file: Path | None
    key_env: str | None
    algorithm: str = "rsa-sha256"


@dataclass(frozen=True)
class Breakers:
    bounce_rate: float = 0.02
    complaint_rate: float = 0.003
    min_sent: int = 200


@dataclass(frozen=True)
class Profile:
    name: str
    transport: TransportKind
    source: str  # file:line, for messages
    host: str | None = None
    port: int | None = None
    tls: TlsMode = TlsMode.NONE
    tls_required: bool = False
    tls_verify: bool = True  # False only for a relay with a self-signed certificate
    username: str | None = None
    password_env: str | None = None
    helo: str | None = None
    outbox: Path | None = None
    timeout: float = 30.0
    connections: int = 10
    messages_per_connection: int = 100
    pools: Mapping[str, tuple[SendingIp, ...]] = field(default_factory=dict)
    classes: Mapping[TrafficClass, str] = field(default_factory=dict)
    bounce_domain: str | None = None
    verp: bool = False
    mx_override: Mapping[str, str] = field(default_factory=dict)
    dns: bool = True
    dkim: tuple[DkimKeyRef, ...] = ()
    max_age: float = 3 * 86400
    retry_delays: tuple[float, ...] = (300, 600, 1200, 2400, 4800, 9600)
    breakers: Breakers = field(default_factory=Breakers)
    rules: Mapping[str, Any] | None = None  # overrides of the shipped provider rules
    preflight: bool = True  # DNS checks before a campaign's first send (relay and direct)

    def password(self) -> str | None:
        """The relay password, read from the environment variable the profile names."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"{self.source}: profiles.{self.name}.password_env: environment variable "
                f"{self.password_env} is not set",
                key=f"profiles.{self.name}.password_env",
            )
        return value

    def pool_for(self, traffic_class: TrafficClass, pool: str | None) -> str:
        name = pool or self.classes.get(traffic_class) or traffic_class.value
        if name in self.pools:
            return name
        if pool is None and len(self.pools) == 1:
            return next(iter(self.pools))
        raise ConfigError(
            f"{self.source}: profiles.{self.name}: no pool '{name}' "
            f"(pools: {', '.join(self.pools) or 'none'})",
            key=f"profiles.{self.name}",
        )


@dataclass(frozen=True)
class ProfilesFile:
    path: Path
    default: str
    profiles: Mapping[str, Profile]

    def get(self, name: str | None) -> Profile:
        name = name or self.default
        profile = self.profiles.get(name)
        if profile is None:
            known = ", ".join(sorted(self.profiles))
            raise ConfigError(
                f"{self.path}: no profile named '{name}' (profiles: {known})", file=str(self.path)
            )
        profile.password()  # an unset password_env is an error only for the profile in use
        return profile


# Keys that only mean something for transport: relay.
_RELAY_KEYS = ("host", "port", "tls", "tls_required", "tls_verify", "username", "password_env")
_PROFILE_KEYS = {
    "transport",
    *_RELAY_KEYS,
    "helo",
    "outbox",
    "timeout",
    "connections",
    "messages_per_connection",
    "pools",
    "classes",
    "bounce_domain",
    "verp",
    "mx_override",
    "dns",
    "dkim",
    "max_age",
    "retry",
    "breakers",
    "rules",
    "preflight",
}
_WARMUP_KEYS = {
    "preset",
    "volumes",
    "start",
    "target_daily",
    "provider_caps",
    "provider_shares",
    "window",
    "idle_reset_days",
    "start_volume",
    "linear_days",
}
_DEFAULT_PORTS = {TlsMode.STARTTLS: 587, TlsMode.IMPLICIT: 465, TlsMode.NONE: 25}
_SANDBOX_IP = "127.0.0.1"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    re.I,
)  # noqa: E501


def _hostname(node: Node) -> str:
    text = node.str()
    if not _HOSTNAME.match(text):
        raise node.error(f"'{text}' is not a host name")
    return text.lower()


def _warmup(node: Node) -> WarmupSetting:
    keys = node.mapping(_WARMUP_KEYS, required={"start", "target_daily"})
    preset = keys["preset"].str() if "preset" in keys else None
    volumes = (
        tuple(v.int(minimum=1) for v in keys["volumes"].sequence()) if "volumes" in keys else None
    )
    if (preset is None) == (volumes is None):
        raise node.error("give exactly one of 'preset' or 'volumes'")
    if preset is not None and preset not in PRESET_NAMES:
        raise keys["preset"].error(
            f"unknown preset '{preset}' (presets: {', '.join(PRESET_NAMES)})"
        )

    window_start, window_end, tz = 0, 24, "UTC"
    if "window" in keys:
        window = keys["window"].mapping({"start", "end", "timezone"})
        if "start" in window:
            window_start = window["start"].int(minimum=0)
        if "end" in window:
            window_end = window["end"].int(minimum=1)
        if window_end > 24 or window_start >= window_end:
            raise keys["window"].error("window needs 0 <= start < end <= 24 (hours)")
        if "timezone" in window:
            tz = window["timezone"].str()
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise window["timezone"].error(f"unknown time zone '{tz}'") from None
    try:
        return WarmupSetting(
            preset=preset,
            volumes=volumes,
            start=keys["start"].date(),
            target_daily=keys["target_daily"].int(minimum=1),
            provider_caps={k: v.int(minimum=0) for k, v in keys["provider_caps"].mapping().items()}
            if "provider_caps" in keys
            else {},
            provider_shares={
                k: v.number(minimum=0, maximum=1)
                for k, v in keys["provider_shares"].mapping().items()
            }
            if "provider_shares" in keys
            else {},
            window_start_hour=window_start,
            window_end_hour=window_end,
            timezone=tz,
            idle_reset_days=keys["idle_reset_days"].int(minimum=1)
            if "idle_reset_days" in keys
            else 30,
            start_volume=keys["start_volume"].int(minimum=1) if "start_volume" in keys else 50,
            linear_days=keys["linear_days"].int(minimum=2) if "linear_days" in keys else 30,
        )
    except ValueError as exc:  # what only the whole setting can check (volumes that decrease)
        raise node.error(str(exc)) from None


def _sending_ip(node: Node) -> SendingIp:
    if isinstance(node.node, yaml.ScalarNode):
        return SendingIp(ip=node.ip())
    keys = node.mapping({"ip", "helo", "warmup"}, required={"ip"})
    return SendingIp(
        ip=keys["ip"].ip(),
        helo=_hostname(keys["helo"]) if "helo" in keys else None,
        warmup=_warmup(keys["warmup"]) if "warmup" in keys else None,
    )


def _profile(name: str, node: Node, base_dir: Path) -> Profile:
    keys = node.mapping(_PROFILE_KEYS, required={"transport"})
    transport = keys["transport"].choice(TransportKind)
    options: dict[str, Any] = {}
    if transport is TransportKind.RELAY:
        if "host" not in keys:
            raise node.error("a relay profile needs 'host'")
    elif transport is TransportKind.DIRECT:
        if "pools" not in keys:
            raise node.error("a direct profile needs 'pools' (its sending IPs)")
    for relay_only in _RELAY_KEYS:
        if relay_only in keys and transport is not TransportKind.RELAY:
            raise keys[relay_only].error(f"'{relay_only}' applies only to transport: relay")
    if "outbox" in keys and transport is not TransportKind.SANDBOX:
        raise keys["outbox"].error("'outbox' applies only to transport: sandbox")
    if "host" in keys:
        options["host"] = _hostname(keys["host"]) if not _is_ip(keys["host"]) else keys["host"].ip()
    tls = (
        keys["tls"].choice(TlsMode)
        if "tls" in keys
        else (TlsMode.STARTTLS if transport is TransportKind.RELAY else TlsMode.NONE)
    )
    options["tls"] = tls
    if "tls_verify" in keys:
        options["tls_verify"] = keys["tls_verify"].bool()
    options["tls_required"] = (
        keys["tls_required"].bool() if "tls_required" in keys else tls is not TlsMode.NONE
    )
    if transport is TransportKind.RELAY:
        port = keys["port"].int(minimum=1) if "port" in keys else _DEFAULT_PORTS[tls]
        if port > 65535:
            raise keys["port"].error(f"{port} is not a TCP port")
        options["port"] = port
    if "username" in keys:
        options["username"] = keys["username"].str()
    if "password_env" in keys:
        var = keys["password_env"].str()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise keys["password_env"].error(f"'{var}' is not an environment variable name")
        options["password_env"] = var
    if ("username" in keys) != ("password_env" in keys):
        raise node.error("give both 'username' and 'password_env' for SMTP AUTH, or neither")
    if "helo" in keys:
        options["helo"] = _hostname(keys["helo"])
    if transport is TransportKind.SANDBOX:
        outbox = keys["outbox"].str() if "outbox" in keys else "outbox"
        options["outbox"] = Path(outbox)
    if "timeout" in keys:
        options["timeout"] = keys["timeout"].duration()
    if "connections" in keys:
        options["connections"] = keys["connections"].int(minimum=1)
    if "messages_per_connection" in keys:
        options["messages_per_connection"] = keys["messages_per_connection"].int(minimum=1)
    pools: dict[str, tuple[SendingIp, ...]] = {}
    if "pools" in keys:
        for pool_name, pool_node in keys["pools"].mapping().items():
            ips = tuple(_sending_ip(item) for item in pool_node.sequence())
            if not ips:
                raise pool_node.error("a pool needs at least one IP")
            pools[pool_name] = ips
        seen: dict[str, str] = {}
        for pool_name, ips in pools.items():
            for sending_ip in ips:
                if sending_ip.ip in seen:
                    raise keys["pools"].error(
                        f"IP {sending_ip.ip} is in pools '{seen[sending_ip.ip]}' and '{pool_name}'"
                        " (an IP belongs to one pool, so traffic classes never mix)"
                    )
                seen[sending_ip.ip] = pool_name
    else:
        pools["default"] = (
            SendingIp(ip=_SANDBOX_IP if transport is TransportKind.SANDBOX else "0.0.0.0"),
        )
    options["pools"] = pools
    if "classes" in keys:
        classes: dict[TrafficClass, str] = {}
        for class_name, pool_node in keys["classes"].mapping().items():
            try:
                traffic_class = TrafficClass(class_name)
            except ValueError:
                raise pool_node.error(
                    f"'{class_name}' is not a traffic class (transactional|marketing)"
                ) from None
            pool_name = pool_node.str()
            if pool_name not in pools:
                raise pool_node.error(f"no pool named '{pool_name}' (pools: {', '.join(pools)})")
            classes[traffic_class] = pool_name
        options["classes"] = classes
    if "bounce_domain" in keys:
        options["bounce_domain"] = _hostname(keys["bounce_domain"])
    if "verp" in keys:
        options["verp"] = keys["verp"].bool()
        if options["verp"] and "bounce_domain" not in keys:
            raise keys["verp"].error("VERP needs 'bounce_domain'")
    if "mx_override" in keys:
        overrides = {}
        for domain, target in keys["mx_override"].mapping().items():
            value = target.str()
            from mailctl.dns.providers import parse_mx_override

            try:
                parse_mx_override(value)
            except ValueError as exc:
                raise target.error(str(exc)) from None
            overrides[domain.lower()] = value
        options["mx_override"] = overrides
    if "dns" in keys:
        options["dns"] = keys["dns"].bool()
    if "dkim" in keys:
        refs = []
        for item in keys["dkim"].sequence():
            dk = item.mapping(
                {"domain", "selector", "key_file", "key_env", "algorithm"},
                required={"domain", "selector"},
            )
            if ("key_file" in dk) == ("key_env" in dk):
                raise item.error("give exactly one of 'key_file' or 'key_env'")
            algorithm = dk["algorithm"].str() if "algorithm" in dk else "rsa-sha256"
            if algorithm not in ("rsa-sha256", "ed25519-sha256"):
                raise dk["algorithm"].error(f"'{algorithm}' is not rsa-sha256 or ed25519-sha256")
            key_file = None
            if "key_file" in dk:
                key_file = Path(dk["key_file"].str())
                if not key_file.is_absolute():
                    key_file = base_dir / key_file
            refs.append(
                DkimKeyRef(
                    domain=_hostname(dk["domain"]),
                    selector=dk["selector"].str(),
                    key_file=key_file,
                    key_env=dk["key_env"].str() if "key_env" in dk else None,
                    algorithm=algorithm,
                )
            )
        options["dkim"] = tuple(refs)
    if "max_age" in keys:
        options["max_age"] = keys["max_age"].duration()
    if "retry" in keys:
        delays = tuple(item.duration() for item in keys["retry"].sequence())
        if not delays:
            raise keys["retry"].error("give at least one retry delay")
        options["retry_delays"] = delays
    if "breakers" in keys:
        br = keys["breakers"].mapping({"bounce_rate", "complaint_rate", "min_sent"})
        options["breakers"] = Breakers(
            bounce_rate=br["bounce_rate"].number(0, 1) if "bounce_rate" in br else 0.02,
            complaint_rate=br["complaint_rate"].number(0, 1) if "complaint_rate" in br else 0.003,
            min_sent=br["min_sent"].int(minimum=1) if "min_sent" in br else 200,
        )
    if "preflight" in keys:
        options["preflight"] = keys["preflight"].bool()
    if "rules" in keys:
        from mailctl.replies.rules import load_rules

        raw = yaml.safe_load(yaml.serialize(keys["rules"].node))
        load_rules(raw, source=f"{keys['rules'].file}:{keys['rules'].line}: profiles.{name}.rules")
        options["rules"] = raw
    return Profile(name=name, transport=transport, source=f"{node.file}:{node.line}", **options)


def _is_ip(node: Node) -> bool:
    try:
        ipaddress.ip_address(str(node.scalar()))
        return True
    except ValueError:
        return False


def load_profiles(path: Path) -> ProfilesFile:
    root = load_yaml(path)
    keys = root.mapping({"default_profile", "profiles"}, required={"profiles"})
    profiles = {
        name: _profile(name, node, path.parent) for name, node in keys["profiles"].mapping().items()
    }
    if not profiles:
        raise keys["profiles"].error("define at least one profile")
    if "default_profile" in keys:
        default = keys["default_profile"].str()
        if default not in profiles:
            raise keys["default_profile"].error(
                f"no profile named '{default}' (profiles: {', '.join(profiles)})"
            )
    else:
        default = "sandbox" if "sandbox" in profiles else next(iter(profiles))
    return ProfilesFile(path=path, default=default, profiles=profiles)


def find_profiles(explicit: Path | None, near: Path | None = None) -> Path:
    """profiles.yaml: --profiles, else MAILCTL_PROFILES, else next to the campaign, else ./."""
    if explicit is not None:
        return explicit
    env = os.environ.get("MAILCTL_PROFILES")
    if env:
        return Path(env)
    candidates = []
    if near is not None:
        candidates += [near / "profiles.yaml", near.parent / "profiles.yaml"]
    candidates.append(Path("profiles.yaml"))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ConfigError(
        "no profiles.yaml found (looked next to the campaign and in the current directory; "
        "use --profiles FILE or MAILCTL_PROFILES)"
    )


# --------------------------------------------------------------------------- campaigns


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
                encoding=rk["encoding"].str() if "encoding" in rk else "utf-8-sig",
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
    if traffic_class is TrafficClass.MARKETING and url is None and mailto is None:
        raise root.error(
            "a marketing campaign needs 'unsubscribe' (url and/or mailto; Gmail and Yahoo "
            "require one-click unsubscribe for bulk mail)"
        )
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
