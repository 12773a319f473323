"""profiles.yaml: how to send, read into frozen, validated `Profile` objects.

Every error names the file, the line and the key path, in one line::

    profiles.yaml:14: profiles.direct.pools.marketing[1]: '10.0.0.999' is not an IPv4 or
    IPv6 address

The bottom of the domain layer: imports mailctl.errors and the config package only, never
replies, dns or reputation (they import config).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from mailctl.config.nodes import Node, load_yaml
from mailctl.config.provider_rules import resolve_rules
from mailctl.errors import ConfigError
from mailctl.warmup_schedule import PRESET_NAMES, WarmupSetting


def parse_mx_override(value: str) -> tuple[str | None, str, int]:
    """``[provider@]host[:port]`` -> (provider or None, host, port).

    The optional provider names the lane when the host is a simulated server on loopback
    (``google@127.0.0.1:2525``). IPv6 hosts go in brackets: ``[::1]:2525``.
    """
    provider, _, rest = value.strip().rpartition("@")
    host, port = rest, 25
    if rest.startswith("["):
        end = rest.find("]")
        if end == -1:
            raise ValueError(f"'{value}': unclosed '[' in an IPv6 host")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"'{value}': expected ':port' after ']'")
            port = _port(value, tail[1:])
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = _port(value, port_text)
    if not host:
        raise ValueError(f"'{value}': no host (use host:port, e.g. 127.0.0.1:2525)")
    return (provider.strip().lower() or None), host.lower(), port


def _port(value: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"'{value}': '{text}' is not a port number (1-65535)")
    return int(text)


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
    host: str | None = None  # the sending host it lives on; None: any host (one-host setups)


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


class UnsubscribeScope(StrEnum):
    LIST = "list"  # the campaign's list only
    ALL = "all"  # every list: the global suppression list


@dataclass(frozen=True)
class UnsubscribeSettings:
    """How unsubscribe links are signed and what an unsubscribe does."""

    secret_env: str | None = None  # else a key file next to the database
    # After a key rotation: the old key's variable, still accepted (never used to sign), so
    # links already sent keep working until they expire.
    previous_secret_env: str | None = None
    base_url: str | None = None  # for campaigns that give no unsubscribe url
    valid_for: float = 400 * 86400  # a link keeps working this long after the send
    scope: UnsubscribeScope = UnsubscribeScope.ALL


@dataclass(frozen=True)
class BounceSettings:
    """How far `bounces import` trusts a report it cannot tie to a message mailctl sent."""

    # Suppress on reports that name no message mailctl sent (only for a mailbox that no one
    # but a trusted MTA can write to), and at most `max_unmatched` addresses of each.
    trust_unmatched: bool = False
    max_unmatched: int = 10


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
    # AUTH may go out without TLS to a host other than loopback (a warning says so).
    allow_plaintext_auth: bool = False
    helo: str | None = None
    outbox: Path | None = None
    timeout: float = 30.0
    connections: int = 10
    messages_per_connection: int = 100
    # Pipeline MAIL, RCPT and DATA (RFC 2920) where the server offers PIPELINING; false
    # only for a server that offers it and mishandles it.
    pipelining: bool = True
    pools: Mapping[str, tuple[SendingIp, ...]] = field(default_factory=dict)
    classes: Mapping[TrafficClass, str] = field(default_factory=dict)
    # Pools whose IPs all live on other sending hosts (see ProfilesFile.for_host).
    elsewhere: frozenset[str] = frozenset()
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
    unsubscribe: UnsubscribeSettings = field(default_factory=UnsubscribeSettings)
    tracking_key_env: str | None = None  # signs tracking ids; else the key file by the db
    bounces: BounceSettings = field(default_factory=BounceSettings)
    # Provider-wide limits over every IP (and every sending host): provider -> messages per
    # hour, counted in the database (`providers: {google: {max_per_hour: 5000}}`).
    provider_hourly: Mapping[str, int] = field(default_factory=dict)

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
        if name in self.elsewhere:
            raise ConfigError(
                f"{self.source}: profiles.{self.name}.pools.{name}: no IP of this pool lives "
                "on this host (see send --host)",
                key=f"profiles.{self.name}.pools.{name}",
            )
        if pool is None and len(self.pools) == 1 and not self.elsewhere:
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

    def get(self, name: str | None, *, need_password: bool = True) -> Profile:
        """The profile `name` (the default one for None). Its password variable must be set
        unless `need_password` is False (a dry run never connects)."""
        name = name or self.default
        profile = self.profiles.get(name)
        if profile is None:
            known = ", ".join(sorted(self.profiles))
            raise ConfigError(
                f"{self.path}: no profile named '{name}' (profiles: {known})", file=str(self.path)
            )
        if need_password:
            profile.password()  # an unset password_env is an error only for the profile in use
        if profile.tracking_key_env and os.environ.get(profile.tracking_key_env) is None:
            raise ConfigError(
                f"{profile.source}: profiles.{profile.name}.tracking_key_env: environment "
                f"variable {profile.tracking_key_env} is not set",
                key=f"profiles.{profile.name}.tracking_key_env",
            )
        return profile

    def for_host(self, host: str) -> ProfilesFile:
        """The profiles as one sending host sees them: each pool keeps only the IPs that
        live on `host` (and those without a `host:`); a pool left empty is set aside, so a
        campaign on it is not sent from here (and never spills into another pool)."""
        profiles = {}
        for name, profile in self.profiles.items():
            pools = {
                pool: kept
                for pool, ips in profile.pools.items()
                if (kept := tuple(ip for ip in ips if ip.host in (None, host)))
            }
            elsewhere = frozenset(profile.pools) - set(pools)
            profiles[name] = replace(profile, pools=pools, elsewhere=elsewhere)
        return replace(self, profiles=profiles)


# Keys that only mean something for transport: relay.
_RELAY_KEYS = (
    "host",
    "port",
    "tls",
    "tls_required",
    "tls_verify",
    "username",
    "password_env",
    "allow_plaintext_auth",
)
_PROFILE_KEYS = {
    "transport",
    *_RELAY_KEYS,
    "helo",
    "outbox",
    "timeout",
    "connections",
    "messages_per_connection",
    "pipelining",
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
    "unsubscribe",
    "tracking_key_env",
    "bounces",
    "providers",
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
    keys = node.mapping({"ip", "helo", "warmup", "host"}, required={"ip"})
    return SendingIp(
        ip=keys["ip"].ip(),
        helo=_hostname(keys["helo"]) if "helo" in keys else None,
        warmup=_warmup(keys["warmup"]) if "warmup" in keys else None,
        host=keys["host"].str() if "host" in keys else None,
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
    if "allow_plaintext_auth" in keys:
        options["allow_plaintext_auth"] = keys["allow_plaintext_auth"].bool()
    if (
        "username" in keys
        and tls is TlsMode.NONE
        and not options.get("allow_plaintext_auth")
        and not is_loopback(str(options.get("host", "")))
    ):
        raise keys["username"].error(
            f"AUTH would send the password in cleartext to {options.get('host')}: use"
            " tls: starttls or tls: implicit, or set allow_plaintext_auth: true"
        )
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
    if "pipelining" in keys:
        options["pipelining"] = keys["pipelining"].bool()
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
    if "unsubscribe" in keys:
        un = keys["unsubscribe"].mapping(
            {"secret_env", "previous_secret_env", "valid_for", "scope", "base_url"}
        )
        settings: dict[str, Any] = {}
        for env_key in ("secret_env", "previous_secret_env"):
            if env_key in un:
                var = un[env_key].str()
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                    raise un[env_key].error(f"'{var}' is not an environment variable name")
                settings[env_key] = var
        if "valid_for" in un:
            settings["valid_for"] = un["valid_for"].duration()
            if settings["valid_for"] < 86400:
                raise un["valid_for"].error("links must stay valid at least 1d")
        if "scope" in un:
            settings["scope"] = un["scope"].choice(UnsubscribeScope)
        if "base_url" in un:
            url = un["base_url"].str()
            if not re.match(r"^https?://[^\s/{}]+[^\s{}]*$", url):
                raise un["base_url"].error(f"'{url}' is not an http(s) URL (no template fields)")
            settings["base_url"] = url
        options["unsubscribe"] = UnsubscribeSettings(**settings)
    if "tracking_key_env" in keys:
        var = keys["tracking_key_env"].str()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise keys["tracking_key_env"].error(f"'{var}' is not an environment variable name")
        options["tracking_key_env"] = var
    if "providers" in keys:
        hourly: dict[str, int] = {}
        for provider, limits in keys["providers"].mapping().items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", provider):
                raise limits.error(f"'{provider}' is not a provider name")
            limit_keys = limits.mapping({"max_per_hour"}, required={"max_per_hour"})
            hourly[provider.lower()] = limit_keys["max_per_hour"].int(minimum=1)
        options["provider_hourly"] = hourly
    if "bounces" in keys:
        bounce_keys = keys["bounces"].mapping({"trust_unmatched", "max_unmatched"})
        options["bounces"] = BounceSettings(
            trust_unmatched=(
                bounce_keys["trust_unmatched"].bool() if "trust_unmatched" in bounce_keys else False
            ),
            max_unmatched=(
                bounce_keys["max_unmatched"].int(minimum=1)
                if "max_unmatched" in bounce_keys
                else 10
            ),
        )
        if options["bounces"].max_unmatched > 100:
            raise bounce_keys["max_unmatched"].error(
                f"{options['bounces'].max_unmatched} is more than 100 addresses per report"
            )
    if "rules" in keys:
        # Kept raw once valid: replies.rules turns it into the RuleSet the lanes use.
        try:
            raw = yaml.safe_load(yaml.serialize(keys["rules"].node))
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise keys["rules"].error(f"not a valid value: {exc}") from None
        resolve_rules(
            raw, source=f"{keys['rules'].file}:{keys['rules'].line}: profiles.{name}.rules"
        )
        options["rules"] = raw
    return Profile(name=name, transport=transport, source=f"{node.file}:{node.line}", **options)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only hosts AUTH may reach without TLS by default."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
