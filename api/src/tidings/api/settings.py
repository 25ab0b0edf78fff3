"""One typed settings object per process: each setting's flag, environment
variable, type and default are declared together, once.

    @dataclass(frozen=True)
    class DispatcherSettings(CommonSettings):
        grace: float = setting("--grace", "TIDINGS_GRACE", 30.0, "seconds to drain on SIGTERM")

    add_arguments(parser, DispatcherSettings)      # in `register`
    settings = load(DispatcherSettings, args)      # in `run`

A flag beats its environment variable, which beats the default. Every flag
has its variable (the help text names it); a secret has only its variable, so
it stays off command lines. A malformed value names the flag or the variable
it came from and an example of a good one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from tidings.api.destinations import DestinationPolicy

T = TypeVar("T")
S = TypeVar("S")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """A malformed flag or environment value; the message names it and the fix."""


@dataclass(frozen=True)
class Setting:
    flag: str | None  # None: environment only (secrets stay off the command line)
    env: str
    help: str
    kind: str  # "str" | "int" | "float" | "bool" | "list"
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    example: str | None = None


def setting(
    flag: str | None,
    env: str,
    default: T,
    help: str,
    *,
    kind: type | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    example: str | None = None,
) -> T:
    """A dataclass field for one setting. `kind` is inferred from the default
    (pass it when the default is None: `kind=int`); a list default makes a
    repeatable flag whose variable is comma-separated."""
    inferred = kind or type(default)
    name = {str: "str", int: "int", float: "float", bool: "bool", list: "list"}.get(inferred)
    if name is None:
        raise TypeError(f"{flag}: settings are str, int, float, bool or list, not {inferred}")
    meta = Setting(flag, env, help, name, tuple(choices) if choices else None, metavar, example)
    field: Any
    if isinstance(default, list):
        items = list(default)
        field = dataclasses.field(default_factory=lambda: list(items), metadata={"setting": meta})
    else:
        field = dataclasses.field(default=default, metadata={"setting": meta})
    return cast(T, field)  # a Field that dataclass turns into a T attribute


@dataclass(frozen=True)
class LogSettings:
    """How every process logs."""

    log_format: str = setting(
        "--log-format", "TIDINGS_LOG_FORMAT", "text", "log format", choices=("text", "json")
    )
    log_level: str = setting("--log-level", "TIDINGS_LOG_LEVEL", "INFO", "log level")


@dataclass(frozen=True)
class CommonSettings(LogSettings):
    """What every process that talks to Redis takes."""

    redis_url: str | None = setting(
        "--redis-url",
        "REDIS_URL",
        None,
        "Redis URL",
        kind=str,
        example="redis://127.0.0.1:6379/0",
    )

    redis_username: str = setting(
        "--redis-username", "REDIS_USERNAME", "", "Redis ACL user (with REDIS_PASSWORD)"
    )
    redis_password: str = setting(
        None, "REDIS_PASSWORD", "", "Redis password (of the ACL user, or requirepass)"
    )
    redis_tls_ca_file: str = setting(
        "--redis-tls-ca-file",
        "REDIS_TLS_CA_FILE",
        "",
        "PEM CA bundle that signs Redis's certificate (rediss:// URLs; default: the system CAs)",
        metavar="PATH",
    )
    redis_tls_ca: str = setting(
        None, "REDIS_TLS_CA", "", "the same CA bundle as PEM text (source adapters get it so)"
    )
    redis_tls_cert_file: str = setting(
        "--redis-tls-cert-file",
        "REDIS_TLS_CERT_FILE",
        "",
        "client certificate (PEM) for a Redis with tls-auth-clients",
        metavar="PATH",
    )
    redis_tls_key_file: str = setting(
        "--redis-tls-key-file", "REDIS_TLS_KEY_FILE", "", "its private key (PEM)", metavar="PATH"
    )

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                "--redis-url (or REDIS_URL) is required, e.g. redis://127.0.0.1:6379/0"
            )
        return self.redis_url

    def redis_connection(self) -> RedisConnection:
        """Where and how to connect to Redis: the URL, the ACL user and password,
        TLS files; SettingsError naming the setting when they do not fit together."""
        url = self.require_redis_url()
        connection = RedisConnection(
            url=url,
            username=self.redis_username,
            password=self.redis_password,
            ca_file=self.redis_tls_ca_file,
            ca_data=self.redis_tls_ca,
            cert_file=self.redis_tls_cert_file,
            key_file=self.redis_tls_key_file,
        )
        connection.check()
        return connection


@dataclass(frozen=True)
class RedisConnection:
    """A Redis URL and the credentials that stay out of it (tidings.api.process.connect_redis)."""

    url: str
    username: str = ""
    password: str = ""
    ca_file: str = ""
    ca_data: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def check(self) -> None:
        tls_settings = [
            name
            for name, value in (
                ("REDIS_TLS_CA_FILE", self.ca_file),
                ("REDIS_TLS_CA", self.ca_data),
                ("REDIS_TLS_CERT_FILE", self.cert_file),
                ("REDIS_TLS_KEY_FILE", self.key_file),
            )
            if value
        ]
        if tls_settings and not self.tls:
            raise SettingsError(
                f"{', '.join(tls_settings)} set, but --redis-url is not rediss://: "
                "use rediss://HOST:PORT/0 to connect with TLS"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingsError(
                "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: set both or neither"
            )
        if self.username and not self.password:
            raise SettingsError(
                f"REDIS_USERNAME={self.username!r} without REDIS_PASSWORD: set the ACL user's "
                "password in REDIS_PASSWORD"
            )
        for name, path in (
            ("REDIS_TLS_CA_FILE", self.ca_file),
            ("REDIS_TLS_CERT_FILE", self.cert_file),
            ("REDIS_TLS_KEY_FILE", self.key_file),
        ):
            if path and not os.path.isfile(path):
                raise SettingsError(f"{name}={path!r}: no such file")

    def options(self) -> dict[str, Any]:
        """The keyword arguments of redis-py's connection for these settings."""
        options: dict[str, Any] = {}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.tls:
            options["ssl_cert_reqs"] = "required"
            if self.ca_file:
                options["ssl_ca_certs"] = self.ca_file
            if self.ca_data:
                options["ssl_ca_data"] = self.ca_data
            if self.cert_file:
                options["ssl_certfile"] = self.cert_file
                options["ssl_keyfile"] = self.key_file
        return options


@dataclass(frozen=True)
class ServeSettings(CommonSettings):
    """A process that serves ingest, health and metrics over HTTP."""

    listen: str = setting(
        "--listen",
        "TIDINGS_LISTEN",
        "0.0.0.0:8080",
        "HOST:PORT for ingest, health and metrics",
        metavar="HOST:PORT",
    )


def _settings(cls: type) -> list[tuple[dataclasses.Field[Any], Setting]]:
    return [
        (field, field.metadata["setting"])
        for field in dataclasses.fields(cls)
        if "setting" in field.metadata
    ]


def _default_text(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None or value == [] or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = ()) -> None:
    """Add one flag per setting of `cls` (a dataclass built with `setting`).
    Parsed values stay None when absent, so `load` can fall back to the
    environment and then the default."""
    for field, meta in _settings(cls):
        if field.name in skip or meta.flag is None:
            continue
        help_text = f"{meta.help} (env {meta.env}; default: {_default_text(field)})"
        if meta.kind == "bool":
            parser.add_argument(
                meta.flag, dest=field.name, action="store_true", default=None, help=help_text
            )
        elif meta.kind == "list":
            parser.add_argument(
                meta.flag,
                dest=field.name,
                action="append",
                default=None,
                metavar=meta.metavar,
                help=help_text + "; repeatable, or comma-separated in the variable",
            )
        else:
            parser.add_argument(
                meta.flag,
                dest=field.name,
                default=None,
                choices=meta.choices,
                metavar=meta.metavar,
                help=help_text,
            )


def _cast(meta: Setting, raw: str, source: str) -> Any:
    example = f"; e.g. {meta.example}" if meta.example else ""
    if meta.kind == "bool":
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{source}={raw!r}: not a boolean; use true or false")
    if meta.kind == "list":
        return [item.strip() for item in raw.split(",") if item.strip()]
    if meta.choices and raw not in meta.choices:
        raise SettingsError(f"{source}={raw!r}: use one of {', '.join(meta.choices)}")
    if meta.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{source}={raw!r}: not a whole number{example}") from None
    if meta.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{source}={raw!r}: not a number{example}") from None
    return raw


def load(
    cls: Callable[..., S],
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> S:
    """The settings: each from its flag, else its environment variable, else its default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field, meta in _settings(cls):  # type: ignore[arg-type]
        given = getattr(args, field.name, None) if args is not None else None
        if given is not None:
            if meta.kind == "list":
                values[field.name] = [
                    item.strip() for value in given for item in str(value).split(",") if item
                ]
            elif meta.kind == "bool":
                values[field.name] = bool(given)
            else:
                values[field.name] = _cast(meta, str(given), meta.flag or meta.env)
        elif environ.get(meta.env) not in (None, ""):
            values[field.name] = _cast(meta, environ[meta.env], meta.env)
    return cls(**values)


@dataclass(frozen=True)
class DestinationSettings:
    """The destination policy (tidings.api.destinations): the same switches for
    the operator (checked when a Trigger compiles), the dispatchers (checked on
    every connection) and `tidings dev`, which allows loopback by default."""

    destinations_loopback: str = setting(
        "--destinations-loopback",
        "TIDINGS_DESTINATIONS_LOOPBACK",
        "refuse",
        "deliver to loopback addresses (127.0.0.0/8, ::1, localhost)?",
        choices=("allow", "refuse"),
    )
    destinations_node: str = setting(
        "--destinations-node",
        "TIDINGS_DESTINATIONS_NODE",
        "refuse",
        "deliver to the node's own addresses (--node-address)?",
        choices=("allow", "refuse"),
    )
    node_addresses: list[str] = setting(
        "--node-address",
        "TIDINGS_NODE_ADDRESSES",
        [],
        "an address or CIDR of the node(s) (the chart passes the pod's host IPs)",
        metavar="CIDR",
    )
    destinations_allow: list[str] = setting(
        "--destinations-allow",
        "TIDINGS_DESTINATIONS_ALLOW",
        [],
        "deliver only to these CIDRs and host suffixes (empty: anywhere not refused)",
        metavar="CIDR|HOST",
    )
    destinations_deny: list[str] = setting(
        "--destinations-deny",
        "TIDINGS_DESTINATIONS_DENY",
        [],
        "never deliver to these CIDRs and host suffixes",
        metavar="CIDR|HOST",
    )

    def destination_policy(self) -> DestinationPolicy:
        """The policy; SettingsError names the flag and variable of a bad entry."""
        for flag, env, entries in (
            ("--node-address", "TIDINGS_NODE_ADDRESSES", self.node_addresses),
            ("--destinations-allow", "TIDINGS_DESTINATIONS_ALLOW", self.destinations_allow),
            ("--destinations-deny", "TIDINGS_DESTINATIONS_DENY", self.destinations_deny),
        ):
            try:
                if flag == "--node-address":
                    DestinationPolicy.build(node_addresses=entries)
                else:
                    DestinationPolicy.build(allow=entries)
            except ValueError as error:
                raise SettingsError(f"{flag} (or {env}): {error}") from None
        return DestinationPolicy.build(
            allow_loopback=self.destinations_loopback == "allow",
            allow_node_addresses=self.destinations_node == "allow",
            node_addresses=self.node_addresses,
            allow=self.destinations_allow,
            deny=self.destinations_deny,
        )
