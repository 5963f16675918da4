"""Daemon settings: embedded defaults < config file (TOML) < ``SESSIOND_*`` environment < flags.

Every setting has one name, ``SECTION.KEY``, used in all four places:

* file: ``[protocol]`` / ``heartbeat_interval = 5.0``
* environment: ``SESSIOND_PROTOCOL_HEARTBEAT_INTERVAL=5`` (lists comma-separated)
* flags: the daemon's command line maps some options onto the same names (:data:`FLAGS`).

Every setting has a spec (:mod:`sessiond.schema`: range or choices, a one-line
doc, whether SIGHUP applies it), declared with :func:`~sessiond.schema.setting`
on the dataclass field, or in :data:`PROTOCOL` for the client package's
``Params``. A value of the wrong type or out of range stops start-up with a
:class:`ConfigError` naming the setting, the value, what is allowed and where
it came from. CONFIG.md is generated from the specs by :func:`reference`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessiond_client.protocol import Params
from sessiond_client.protocol.frames import MIN_MAX_FRAME

from .addresses import parse_listen
from .budgets import Limits
from .channels.config import ChannelsConfig
from .schema import Spec, setting, spec_of
from .store.urls import parse_store_url

ENV_PREFIX = "SESSIOND_"
#: ``SESSIOND_*`` variables that are not settings.
ENV_OTHER = {
    "SESSIOND_CONFIG": "the config file, when --config is not given",
    "SESSIOND_PURE": "1: decode with msgpack only, even where the compiled DATA loop is built",
}
U32 = 0xFFFFFFFF
DAY = 86_400.0


class ConfigError(ValueError):
    """A setting is unknown or invalid; the message names it and its source. Loading
    reports every bad setting at once: *problems* lists them (the message joins them)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def _listen_address(value: str) -> None:
    parse_listen(value)


def _http_address(value: str) -> None:
    if value:
        parse_listen(value, ("http",))


def _socket_path(value: str) -> None:
    if len(value.encode()) > 107:  # sun_path holds 108 bytes, NUL included
        raise ValueError("a unix socket path holds at most 107 bytes")


def _not_empty(value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


@dataclass(frozen=True, slots=True)
class ServerSection:
    """``[server]``: listeners, application, limits and logging."""

    listen: tuple[str, ...] = setting(
        ("tcp://127.0.0.1:7420",),
        doc="addresses to listen on: tcp://HOST:PORT or tls://HOST:PORT, IPv6 in brackets",
        min_items=1,
        check=_listen_address,
        check_doc="tcp:// or tls:// addresses",
    )
    app: str = setting(
        "channels",
        doc="the application: channels (protocol.md §15), echo, echo-async, or module:callable",
        check=_not_empty,
        check_doc="a name",
    )
    max_sessions: int = setting(
        100_000,
        doc="live sessions (attached or detached); beyond, new ones are refused with "
        "LIMIT_EXCEEDED",
        low=1,
        high=100_000_000,
        reload=True,
    )
    max_transports_per_peer: int = setting(
        256,
        doc="open transports from one client IP address; beyond, LIMIT_EXCEEDED",
        low=1,
        high=10_000_000,
        reload=True,
    )
    drain_timeout: float = setting(
        10.0,
        doc="on SIGTERM: how long to wait for clients to acknowledge everything after GOAWAY",
        low=0,
        high=DAY,
        unit="s",
        reload=True,
    )
    retry_after: float = setting(
        1.0,
        doc="how long clients are told to wait before reconnecting after a drain",
        low=0,
        high=DAY,
        unit="s",
        reload=True,
    )
    workers: int = setting(
        1,
        doc="worker processes sharing the listening port (SO_REUSEPORT) under a supervisor "
        "that restarts crashed ones and replaces them one at a time on SIGHUP; more than 1 "
        "needs a shared store ([store] url); [metrics] and [admin] are then served by the "
        "supervisor for every worker",
        low=1,
        high=256,
    )
    log_format: str = setting(
        "text",
        doc="log lines as text, or one JSON object per line",
        choices=("text", "json"),
        reload=True,
    )
    log_level: str = setting(
        "INFO",
        doc="least severe log level written (any case)",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        fold=True,
        reload=True,
    )


@dataclass(frozen=True, slots=True)
class TlsSection:
    """``[tls]``: certificate and key for ``tls://`` listeners, client CA, idle memory."""

    cert: str = setting(
        "", doc="server certificate chain (PEM) for tls:// listeners; SIGHUP re-reads it",
        reload=True,
    )  # fmt: skip
    key: str = setting(
        "", doc="server private key (PEM) for tls:// listeners; SIGHUP re-reads it", reload=True
    )
    client_ca: str = setting(
        "", doc="CA file (PEM): require client certificates it signed (mutual TLS)"
    )
    idle_memory: str = setting(
        "compact",
        doc="compact: TLS transports read ciphertext into one shared buffer (asyncio's TLS "
        "protocol), so an idle TLS session costs ~23 KiB of RSS, for a little more CPU per "
        "TLS record (tls/tcp server CPU per 64 B message 1.23x against 1.10x); fast: "
        "uvloop's TLS protocol, a 256 KiB read buffer per transport, ~37 KiB per idle TLS "
        'session (README, "Memory over TLS")',
        choices=("compact", "fast"),
    )


@dataclass(frozen=True, slots=True)
class AuthSection:
    """``[auth]``: ``mode`` is ``open`` (loopback only), ``token-file`` or ``mutual-tls``."""

    mode: str = setting(
        "open",
        doc="open: anyone, from loopback addresses only; token-file: bearer tokens; "
        "mutual-tls: the client certificate's commonName is the identity",
        choices=("open", "token-file", "mutual-tls"),
        reload=True,
    )
    token_file: str = setting(
        "",
        doc='for token-file: lines of "IDENTITY SHA256-HEX" (sessiond hash-token makes one); '
        "SIGHUP re-reads it",
        reload=True,
    )


@dataclass(frozen=True, slots=True)
class MetricsSection:
    """``[metrics]``: the HTTP listener for ``/metrics``, ``/healthz`` and ``/readyz``."""

    listen: str = setting(
        "",
        doc="HOST:PORT for Prometheus /metrics, /healthz and /readyz over HTTP; empty: off. "
        "With server.workers > 1 the supervisor serves it: every worker's series labelled "
        'worker="SLOT", counters summed over the processes that held the slot (a worker\'s '
        "counts since the last scrape are lost if it is killed); /readyz is 200 while any "
        "worker is ready",
        check=_http_address,
        check_doc="empty or HOST:PORT",
    )


@dataclass(frozen=True, slots=True)
class AdminSection:
    """``[admin]``: the local socket ``sessiond sessions`` talks to."""

    socket: str = setting(
        "",
        doc="path of a unix socket (mode 0600) for sessiond sessions list/end; empty: off. "
        "With server.workers > 1 the supervisor serves it for every worker",
        check=_socket_path,
        check_doc="empty or a path of at most 107 bytes",
    )


def _store_url(value: str) -> None:
    parse_store_url(value)


@dataclass(frozen=True, slots=True)
class StoreSection:
    """``[store]``: where sessions live (README, "The session store")."""

    url: str = setting(
        "memory",
        doc="memory (this process only), redis://HOST:PORT/DB, rediss://HOST:PORT/DB or "
        "unix:///path/redis.sock (sessions survive restarts and move between processes)",
        check=_store_url,
        check_doc="memory or a redis://, rediss:// or unix:// URL",
    )
    key_prefix: str = setting(
        "sessiond:",
        doc="prefix of every Redis key and channel (one daemon cluster per prefix)",
        check=_not_empty,
    )
    lease_ttl: float = setting(
        3.0,
        doc="a process's lease in Redis: its sessions are claimable this long after it dies",
        low=0.5,
        high=60.0,
        unit="s",
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon is configured with."""

    server: ServerSection = field(default_factory=ServerSection)
    tls: TlsSection = field(default_factory=TlsSection)
    auth: AuthSection = field(default_factory=AuthSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    admin: AdminSection = field(default_factory=AdminSection)
    store: StoreSection = field(default_factory=StoreSection)
    protocol: Params = field(default_factory=Params)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    limits: Limits = field(default_factory=Limits)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerSection,
    "tls": TlsSection,
    "auth": AuthSection,
    "metrics": MetricsSection,
    "admin": AdminSection,
    "store": StoreSection,
    "protocol": Params,
    "channels": ChannelsConfig,
    "limits": Limits,
}

#: Specs of ``[protocol]``: ``Params`` lives in the client package, which stays free of
#: the daemon's schema, so its specs are kept here (a test checks every field has one).
#: Times go on the wire in milliseconds as uint32 (protocol.md §3), hence the bounds.
PROTOCOL: dict[str, Spec] = {
    "heartbeat_interval": Spec(
        "heartbeat interval used when a client asks for none (§7)",
        0, 3600, above=True, unit="s",
    ),
    "heartbeat_min": Spec(
        "shortest heartbeat interval a client may ask for (§7.1)", 0, 3600, above=True, unit="s"
    ),
    "heartbeat_max": Spec(
        "longest heartbeat interval a client may ask for (§7.1)", 0, DAY, above=True, unit="s"
    ),
    "idle_timeout_factor": Spec(
        "a transport silent for this many heartbeat intervals is dead (§7.3)", 1.5, 100
    ),
    "handshake_timeout": Spec(
        "time a new transport (TLS included) has to complete its HELLO (§3)",
        0, 600, above=True, unit="s",
    ),
    "detached_lifetime": Spec(
        "how long a detached session waits for a resume when the client asks for no "
        "lifetime (§8)", 0, 30 * DAY, unit="s",
    ),
    "detached_lifetime_max": Spec(
        "longest detached lifetime a client may ask for (§8.1)", 0, 30 * DAY, unit="s"
    ),
    "window_messages": Spec(
        "messages a client may have in flight to the daemon (receive window, §6)", 1, U32
    ),
    "window_bytes": Spec(
        "payload bytes a client may have in flight to the daemon (receive window, §6)",
        1, U32, unit="bytes",
    ),
    "replay_messages": Spec(
        "unacknowledged messages kept per session for replay after a resume (§6)", 1, U32
    ),
    "replay_bytes": Spec(
        "unacknowledged payload bytes kept per session for replay after a resume (§6)",
        1, 1 << 40, unit="bytes",
    ),
    "max_frame_size": Spec(
        "largest frame the daemon accepts (§2)", MIN_MAX_FRAME, U32, unit="bytes"
    ),
    "ack_delay": Spec(
        "how long an acknowledgement may wait to be coalesced (§6)", 0, 10, unit="s"
    ),
}  # fmt: skip

#: Pairs of settings where the first may not exceed the second.
ORDERED = (
    ("protocol.heartbeat_min", "protocol.heartbeat_max"),
    ("protocol.detached_lifetime", "protocol.detached_lifetime_max"),
)

#: Settings that ``sessiond serve`` also takes as a flag.
FLAGS = {
    "server.listen": "--listen",
    "server.app": "--app",
    "server.log_level": "--log-level",
    "server.log_format": "--log-format",
    "tls.cert": "--tls-cert",
    "tls.key": "--tls-key",
    "tls.client_ca": "--tls-client-ca",
    "auth.mode": "--auth",
    "auth.token_file": "--token-file",
    "metrics.listen": "--metrics",
    "admin.socket": "--admin-socket",
    "server.workers": "--workers",
    "store.url": "--store",
}


def spec(section: str, key: str) -> Spec:
    """The spec of ``section.key`` (``KeyError`` if there is no such setting)."""
    if section == "protocol":
        if key not in {f.name for f in dataclasses.fields(Params)}:
            raise KeyError(key)
        return PROTOCOL[key]
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            found = spec_of(f)
            if found is None:
                raise TypeError(f"{section}.{key} has no spec: declare it with setting()")
            return found
    raise KeyError(key)


def names() -> list[str]:
    """Every setting's ``section.key`` name."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def env_name(name: str) -> str:
    """The environment variable of ``section.key``."""
    return ENV_PREFIX + name.replace(".", "_").upper()


def default(name: str) -> Any:
    """The embedded default of ``section.key``."""
    section, _, key = name.partition(".")
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f.default
    raise KeyError(name)


def _field_type(section: str, key: str) -> Any:
    cls = SECTIONS[section]
    for f in dataclasses.fields(cls):
        if f.name == key:
            return f.type
    raise KeyError(key)


_KINDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _convert(section: str, key: str, value: Any, source: str) -> Any:
    """Check and convert one value; strings (environment, flags) are parsed."""
    kind = str(_field_type(section, key))
    where = f"{section}.{key} = {_shown(value)} (from {source})"
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
                value = int(value.replace("_", ""), 0)
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
        expected = _KINDS.get(kind, "a list of strings")
        raise ConfigError(f"{where}: expected {expected}") from None
    found = spec(section, key)
    value = found.normalize(value)
    problem = found.problem(value)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


@dataclass(slots=True)
class Loaded:
    """Settings with where each came from, and warnings for the log."""

    settings: Settings
    sources: dict[str, str]  # section.key -> "default", "file PATH", "environment NAME", ...
    warnings: list[str]


class _Layers:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        self.sources: dict[str, str] = {}
        self.warnings: list[str] = []
        self.errors: list[str] = []  # every bad setting, reported together

    def merge(self, section: str, key: str, value: Any, source: str) -> None:
        """Take one value, or note why it cannot be taken (see :meth:`check`)."""
        try:
            self._merge(section, key, value, source)
        except ConfigError as exc:
            self.errors.append(str(exc))

    def check(self) -> None:
        """Raise one ConfigError naming every problem noted so far."""
        errors = self.errors
        if len(errors) == 1:
            raise ConfigError(errors[0])
        if errors:
            raise ConfigError(f"{len(errors)} problems: {'; '.join(errors)}", list(errors))

    def _merge(self, section: str, key: str, value: Any, source: str) -> None:
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section {section!r} (from {source}); known: {', '.join(SECTIONS)}"
            )
        try:
            _field_type(section, key)
        except KeyError:
            raise ConfigError(
                f"unknown setting {section}.{key} (from {source}){_suggest(section, key)}"
            ) from None
        self.values[section][key] = _convert(section, key, value, source)
        self.sources[f"{section}.{key}"] = source


def _suggest(section: str, key: str) -> str:
    close = difflib.get_close_matches(f"{section}.{key}", names(), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def from_file(path: Path, into: _Layers) -> None:
    """Read a TOML file of ``[section]`` tables into *into*."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a [section] table")
        for key, value in table.items():
            into.merge(section, key, value, f"file {path}")


def from_environment(env: Mapping[str, str], into: _Layers) -> None:
    """Read ``SESSIOND_SECTION_KEY`` variables into *into*.

    A ``SESSIOND_*`` variable that is not a setting stops start-up when it names a known
    section or is one typo away from a setting's variable (someone meant to configure
    something, and it would silently not happen); any other one (another program's, or
    an old test variable) is ignored with a warning.
    """
    variables = {env_name(name): name for name in names()}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_OTHER:
            continue
        setting_name = variables.get(name)
        if setting_name is None:
            rest = name[len(ENV_PREFIX) :].lower()
            section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
            close = difflib.get_close_matches(name, list(variables), n=1, cutoff=0.85)
            if section is not None:
                key = rest[len(section) + 1 :]
                into.errors.append(
                    f"unknown setting {section}.{key} (from environment {name})"
                    f"{_suggest(section, key)}"
                )
                continue
            if close:
                into.errors.append(f"environment {name} is not a setting; did you mean {close[0]}?")
                continue
            into.warnings.append(f"environment {name} is not a setting: ignored")
            continue
        section, _, key = setting_name.partition(".")
        into.merge(section, key, value, f"environment {name}")


def load_with_sources(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Loaded:
    """Build the settings: defaults, then *file*, then *env*, then *flags* (``section.key``).

    Raises :class:`ConfigError` naming the setting, the value, what is allowed and where
    the value came from.
    """
    layers = _Layers()
    if file is not None:
        from_file(file, layers)
    if env is not None:
        from_environment(env, layers)
    for name, value in (flags or {}).items():
        section, _, key = name.partition(".")
        flag = FLAGS.get(name)
        layers.merge(section, key, value, f"flag {flag}" if flag else "command line")
    values = layers.values
    for low_name, high_name in ORDERED:
        (ls, _, lk), (hs, _, hk) = low_name.partition("."), high_name.partition(".")
        low = values[ls].get(lk, default(low_name))
        high = values[hs].get(hk, default(high_name))
        if low > high:
            where = layers.sources.get(low_name) or layers.sources.get(high_name, "default")
            layers.errors.append(
                f"{low_name} = {low!r} is more than {high_name} = {high!r} (from {where})"
            )
    layers.check()
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        try:
            built[section] = cls(**values[section])
        except ValueError as exc:  # a check the specs do not express
            raise ConfigError(f"[{section}]: {exc}") from None
    sources = {name: layers.sources.get(name, "default") for name in names()}
    return Loaded(Settings(**built), sources, layers.warnings)


def best_effort(
    name: str,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Any:
    """``section.key`` from the highest layer that sets it, ignoring every error; the
    default if none does. For reporting a configuration error in the format it asked
    for (``server.log_format``) when the configuration as a whole does not load."""
    if flags and name in flags:
        return flags[name]
    if env and env_name(name) in env:
        return env[env_name(name)]
    if file is not None:
        section, _, key = name.partition(".")
        try:
            table = tomllib.loads(file.read_text()).get(section, {})
            if isinstance(table, dict) and key in table:
                return table[key]
        except (OSError, ValueError):
            pass
    return default(name)


def load(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """The settings of :func:`load_with_sources`, without sources and warnings."""
    return load_with_sources(file, env, flags).settings


def value(settings: Settings, name: str) -> Any:
    """The value of ``section.key`` in *settings*."""
    section, _, key = name.partition(".")
    return getattr(getattr(settings, section), key)


def toml_value(value: Any) -> str:
    """*value* written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def show(loaded: Loaded) -> str:
    """The effective settings as a TOML file, each line saying where its value came from."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for name in names():
            if name.startswith(section + "."):
                key = name.partition(".")[2]
                text = f"{key} = {toml_value(value(loaded.settings, name))}"
                lines.append(f"{text:<48} # {loaded.sources[name]}")
        lines.append("")
    return "\n".join(lines)


def changed(old: Settings, new: Settings) -> list[str]:
    """The names of the settings whose values differ."""
    return [name for name in names() if value(old, name) != value(new, name)]


REFERENCE_INTRO = """\
# sessiond configuration reference

Generated from the schema (`sessiond/config.py`, `sessiond/schema.py`) by
`sessiond config reference > CONFIG.md`; `tests/test_config_schema.py` checks that this
file and the schema agree.

Every setting has one name, `SECTION.KEY`. It can be set in a TOML file
(`sessiond serve --config FILE.toml`, or `$SESSIOND_CONFIG`) under `[SECTION]`, as the
environment variable `SESSIOND_SECTION_KEY` (upper case; lists comma-separated), and
for some, as a flag of `sessiond serve`. Precedence, lowest first: the defaults below, the
file, the environment, flags. A value of the wrong type or out of range stops start-up
with a message naming the setting, the value, what is allowed and where it came from
(`sessiond config check FILE` runs the same checks without starting; `sessiond config
show` prints every effective value and its source). A `SESSIOND_*` variable that is not a
setting stops start-up if it names a known section or is one typo away from a setting's
variable; any other one is ignored with a warning in the log.

**SIGHUP** re-reads the file and applies the settings marked *live* to the running
daemon (open sessions keep their transports); the others need a restart, and the
reload's log line says which changed settings are waiting for one. Sizes are bytes,
times seconds.
"""


def reference() -> str:
    """CONFIG.md: every setting with its default, allowed values, flag and doc."""
    out = [REFERENCE_INTRO]
    for section, cls in SECTIONS.items():
        out.append(f"## [{section}]\n")
        doc = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        doc = doc.removeprefix(f"`[{section}]`: ")
        if section == "protocol":
            doc = "Protocol parameters (protocol.md §3, §6, §7, §8, §9)."
        out.append(doc[:1].upper() + doc[1:] + "\n")
        out.append("| setting | default | allowed | SIGHUP | flag | what it does |")
        out.append("|---|---|---|---|---|---|")
        for f in dataclasses.fields(cls):
            name = f"{section}.{f.name}"
            found = spec(section, f.name)
            flag = f"`{FLAGS[name]}`" if name in FLAGS else ""
            row = [
                f"`{f.name}`",
                f"`{toml_value(f.default)}`",
                found.allowed().replace("|", "\\|"),
                "live" if found.reload else "restart",
                flag,
                found.doc.replace("|", "\\|"),
            ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)
