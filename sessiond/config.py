"""Daemon settings: embedded defaults < config file (TOML) < ``SESSIOND_*`` environment < flags.

Every setting has one name, ``SECTION.KEY``, used in all four places:

* file: ``[protocol]`` / ``heartbeat_interval = 5.0``
* environment: ``SESSIOND_PROTOCOL_HEARTBEAT_INTERVAL=5``
* flags: the daemon's command line maps its options onto the same names.

An unknown name or a value of the wrong type stops start-up with a
:class:`ConfigError` naming the setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessiond_client.protocol import Params

from .budgets import Limits
from .channels.config import ChannelsConfig

ENV_PREFIX = "SESSIOND_"


class ConfigError(ValueError):
    """A setting is unknown or invalid; the message names it and its source."""


@dataclass(frozen=True, slots=True)
class ServerSection:
    """``[server]``: listeners, application, limits and logging."""

    listen: tuple[str, ...] = ("tcp://127.0.0.1:7420",)
    app: str = "channels"
    max_sessions: int = 100_000
    max_transports_per_peer: int = 256
    drain_timeout: float = 10.0
    retry_after: float = 1.0
    log_format: str = "text"
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class TlsSection:
    """``[tls]``: certificate and key for ``tls://`` listeners; a client CA for mutual TLS."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""


@dataclass(frozen=True, slots=True)
class AuthSection:
    """``[auth]``: ``mode`` is ``open`` (loopback only), ``token-file`` or ``mutual-tls``."""

    mode: str = "open"
    token_file: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon is configured with."""

    server: ServerSection = field(default_factory=ServerSection)
    tls: TlsSection = field(default_factory=TlsSection)
    auth: AuthSection = field(default_factory=AuthSection)
    protocol: Params = field(default_factory=Params)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    limits: Limits = field(default_factory=Limits)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerSection,
    "tls": TlsSection,
    "auth": AuthSection,
    "protocol": Params,
    "channels": ChannelsConfig,
    "limits": Limits,
}
_CHOICES = {
    ("server", "log_format"): ("text", "json"),
    ("auth", "mode"): ("open", "token-file", "mutual-tls"),
}


def names() -> list[str]:
    """Every setting's ``section.key`` name."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _field_type(section: str, key: str) -> Any:
    cls = SECTIONS[section]
    for f in dataclasses.fields(cls):
        if f.name == key:
            return f.type
    raise KeyError(key)


def _convert(section: str, key: str, value: Any, source: str) -> Any:
    """Check and convert one value; strings (environment, flags) are parsed."""
    kind = str(_field_type(section, key))
    where = f"{section}.{key} (from {source})"
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, str):
                value = int(value, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
        elif kind == "float":
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError
            value = float(value)
        elif kind.startswith("tuple"):
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError
            value = tuple(value)
        elif kind == "str" and not isinstance(value, str):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
    choices = _CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _merge(
    target: dict[str, dict[str, Any]], section: str, key: str, value: Any, source: str
) -> None:
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown section {section!r} (from {source}); known: {', '.join(SECTIONS)}"
        )
    try:
        _field_type(section, key)
    except KeyError:
        raise ConfigError(f"unknown setting {section}.{key} (from {source})") from None
    target[section][key] = _convert(section, key, value, source)


def from_file(path: Path, into: dict[str, dict[str, Any]]) -> None:
    """Read a TOML file of ``[section]`` tables into *into*."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a [section] table")
        for key, value in table.items():
            _merge(into, section, key, value, str(path))


def from_environment(env: Mapping[str, str], into: dict[str, dict[str, Any]]) -> None:
    """Read ``SESSIOND_SECTION_KEY`` variables into *into*."""
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "SESSIOND_CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        _merge(into, section, key, value, f"environment {name}")


def load(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults, then *file*, then *env*, then *flags* (``section.key``)."""
    layered: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    if file is not None:
        from_file(file, layered)
    if env is not None:
        from_environment(env, layered)
    for name, value in (flags or {}).items():
        section, _, key = name.partition(".")
        _merge(layered, section, key, value, "command line")
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        try:
            built[section] = cls(**layered[section])
        except ValueError as exc:  # Params, ChannelsConfig, Limits validate their own values
            raise ConfigError(f"[{section}]: {exc}") from None
    return Settings(**built)
