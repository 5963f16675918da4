"""``sessiond serve`` at run time: listeners, signals, reload, and the operator's side doors.

:func:`prepare` checks everything a configuration needs before anything listens (also
what ``sessiond config check`` runs). :class:`Daemon` runs the server: SIGTERM and
SIGINT drain it (protocol.md §11), SIGHUP reloads what can change live (:meth:`reload`)
and never stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config
from .addresses import ListenAddress, format_host, parse_listen
from .admin import AdminError, AdminServer
from .apps import load_app
from .auth import Authenticator, MutualTLSAuthenticator, OpenAuthenticator, TokenFileAuthenticator
from .channels import ChannelsApp
from .config import Loaded, Settings, TlsSection
from .gather import WorkerDoor
from .logs import configure as configure_logging
from .metrics import MetricsServer
from .server import Server, ServerConfig
from .store import StoreError, parse_store_url
from .systemd import Notifier
from .tls import CertificateReloader, describe, server_context
from .workers import WorkerLink
from .workers import check as check_workers

if TYPE_CHECKING:
    from .store.redisstore import RedisStore

log = logging.getLogger("sessiond")


@dataclass(frozen=True, slots=True)
class TLSSetup:
    context: ssl.SSLContext
    reloader: CertificateReloader
    client_ca: str | None


def tls_setup(settings: TlsSection, listens: list[ListenAddress]) -> TLSSetup | None:
    """The server context for the tls:// listeners; ``ValueError`` on a configuration error."""
    tls_listens = [str(a) for a in listens if a.scheme == "tls"]
    options = {"--tls-cert": settings.cert, "--tls-key": settings.key}
    if not tls_listens:
        given = [
            name
            for name, value in [*options.items(), ("--tls-client-ca", settings.client_ca)]
            if value
        ]
        if given:  # almost certainly meant to be TLS: do not silently serve plaintext
            raise ValueError(f"{' and '.join(given)} given but no --listen tls://HOST:PORT")
        return None
    missing = [name for name, value in options.items() if not value]
    if missing:
        raise ValueError(f"--listen {tls_listens[0]} needs {' and '.join(missing)}")
    client_ca = settings.client_ca or None
    context = server_context(settings.cert, settings.key, client_ca)
    return TLSSetup(context, CertificateReloader(context, settings.cert, settings.key), client_ca)


def authenticator(settings: Settings) -> Authenticator:
    """The authenticator ``[auth] mode`` names; ``ValueError`` if it cannot work."""
    mode = settings.auth.mode
    if mode == "token-file":
        if not settings.auth.token_file:
            raise ValueError("--auth token-file needs --token-file (auth.token_file)")
        return TokenFileAuthenticator(settings.auth.token_file)
    if mode == "mutual-tls":
        if not settings.tls.client_ca:
            raise ValueError("--auth mutual-tls needs --tls-client-ca (tls.client_ca)")
        return MutualTLSAuthenticator()
    return OpenAuthenticator()


def server_config(settings: Settings, auth: Authenticator | None = None) -> ServerConfig:
    """The server's settings; the authenticator made from *settings* unless given."""
    return ServerConfig(
        params=settings.protocol,
        authenticator=auth if auth is not None else authenticator(settings),
        max_sessions=settings.server.max_sessions,
        max_transports_per_peer=settings.server.max_transports_per_peer,
        drain_timeout=settings.server.drain_timeout,
        limits=settings.limits,
        tls_shared_buffer=settings.tls.idle_memory == "compact",
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a configuration needs, made and checked before anything listens."""

    listens: list[ListenAddress]
    tls: TLSSetup | None
    auth: Authenticator


def prepare(settings: Settings) -> Prepared:
    """Check *settings* as far as possible without listening (app importable, TLS files
    and token file readable and valid); ``ValueError`` names what is wrong."""
    listens = [parse_listen(value) for value in settings.server.listen]
    check_workers(settings)
    load_app(settings.server.app, settings)
    tls = tls_setup(settings.tls, listens)
    socket = settings.admin.socket
    if socket and not Path(socket).parent.is_dir():
        raise ValueError(f"admin.socket {socket}: no directory {Path(socket).parent}")
    return Prepared(listens, tls, authenticator(settings))


async def open_store(settings: Settings) -> RedisStore | None:
    """The started session store ``[store] url`` names (None: memory);
    :class:`StoreError` saying why it cannot be used."""
    url = parse_store_url(settings.store.url)
    if not url.shared:
        return None
    try:
        from .store.redisstore import RedisStore  # noqa: PLC0415 - an optional dependency
    except ImportError:
        raise StoreError(
            f"--store {url.url} needs the redis extra: pip install 'sessiond[redis]'"
        ) from None
    ttl = settings.store.lease_ttl
    # Renewed well within its TTL: a lease of 1 s renewed every second was always "about
    # to run out", and the daemon detached every session each second.
    store = RedisStore(
        url.url, settings.store.key_prefix, lease_ttl=ttl, renew_every=min(1.0, ttl / 3)
    )
    await store.start()
    log.info(
        "session store %s (node %s, key prefix %s)",
        url.url,
        store.node,
        settings.store.key_prefix,
        extra=_fields("store", url=url.url, node=store.node),
    )
    return store


def _fields(event: str, **more: Any) -> dict[str, Any]:
    return {"fields": {"event": event, **more}}


class Daemon:
    """One ``sessiond serve`` process: its server, signals and reloads.

    *load_again* reads the configuration again the way start-up did (file, environment,
    flags): SIGHUP calls it. A worker of ``--workers`` has its *worker* link to the
    supervisor (sessiond/workers.py).
    """

    def __init__(
        self,
        loaded: Loaded,
        prepared: Prepared,
        load_again: Callable[[], Loaded],
        worker: WorkerLink | None = None,
    ):
        self.settings = loaded.settings
        self.prepared = prepared
        self.load_again = load_again
        self.app = load_app(self.settings.server.app, self.settings)
        self.server: Server | None = None
        self.listening = False
        self.draining = False
        self.metrics: MetricsServer | None = None
        self.admin: AdminServer | None = None  # or a worker's door (sessiond/gather.py)
        self.notifier = Notifier()
        self.worker = worker
        #: More conditions for /readyz (a store's reachability, ...): each returns why the
        #: daemon is not ready, or None.
        self.readiness_checks: list[Callable[[], str | None]] = []
        self._bound: list[str] = []
        self._stop: asyncio.Event | None = None

    async def run(self) -> int:
        """Listen, serve until SIGTERM or SIGINT, drain; the process's exit status."""
        settings = self.settings
        # Signals first: a SIGTERM or SIGHUP right after the "listening" line must not
        # find Python's default handlers (which end the process).
        loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is not None:
            loop.add_signal_handler(hangup, self.reload)
        if self.worker is not None:
            self.worker.watch(loop, stop.set)
        try:
            store = await open_store(settings)
        except StoreError as exc:
            log.error("%s", exc, extra=_fields("store-failed", error=str(exc)))
            return 1
        if store is not None and isinstance(self.app, ChannelsApp):
            try:  # one channels space across every process on the store (issue 17)
                await self.app.share(store.url, store.prefix, store.node, store.lease_ttl)
            except ConnectionError as exc:
                log.error("%s", exc, extra=_fields("store-failed", error=str(exc)))
                await store.close()
                return 1
        self.server = server = Server(
            self.app, server_config(settings, self.prepared.auth), store=store
        )
        if server.durable is not None:
            durable = server.durable
            self.readiness_checks.append(
                lambda: None if durable.accepting else "session store unavailable"
            )
        if self.worker is not None:  # the supervisor serves metrics and the admin socket
            doors = await self._start_door(server, self.worker.door)
        else:
            doors = await self._start_metrics() and await self._start_admin(server)
        if not doors:
            await server.close()
            await self._stop_side_doors()
            return 1
        tls = self.prepared.tls
        for address in self.prepared.listens:
            context = tls.context if address.scheme == "tls" and tls is not None else None
            try:
                listener = await server.listen(
                    address.host, address.port, ssl=context, reuse_port=self.worker is not None
                )
            except OSError as exc:
                why = exc.strerror or str(exc)
                log.error(
                    "cannot listen on %s: %s",
                    address,
                    why,
                    extra=_fields("listen-failed", address=str(address), error=why),
                )
                await server.close()
                await self._stop_side_doors()
                return 1
            for sock in listener.sockets:
                host, port = sock.getsockname()[:2]
                bound = f"{address.scheme}://{format_host(host)}:{port}"
                self._bound.append(bound)
                log.info(
                    "listening on %s app=%s",
                    bound,
                    settings.server.app,
                    extra=_fields("listening", address=bound, app=settings.server.app),
                )
        self.listening = True
        self.notifier.ready(self._status())
        if self.worker is not None:
            self.worker.ready()
        self.notifier.start_watchdog(loop)
        self._warn_open_auth()
        if tls is not None:
            described = describe(tls.reloader.certificate)
            log.info(
                "TLS certificate %s",
                described,
                extra=_fields("tls-certificate", certificate=described),
            )
            if tls.client_ca is not None:
                log.info(
                    "TLS client certificates required, CA file %s",
                    tls.client_ca,
                    extra=_fields("tls-client-ca", file=tls.client_ca),
                )
        await stop.wait()
        self.draining = True
        self.notifier.stopping("draining")
        timeout = self.settings.server.drain_timeout
        log.info("draining (at most %.1f s)", timeout, extra=_fields("draining", timeout=timeout))
        await server.drain(timeout, self.settings.server.retry_after)
        if isinstance(self.app, ChannelsApp):
            await self.app.close()
        if self.worker is not None and isinstance(self.admin, WorkerDoor):
            # What it counted since the supervisor's last scrape stays in the sums.
            self.worker.report(json.dumps(await self.admin.families()).encode())
        await self._stop_side_doors()
        self.notifier.stop_watchdog()
        log.info("stopped", extra=_fields("stopped"))
        return 0

    def _status(self) -> str:
        return "listening on " + ", ".join(self._bound)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: listening, not draining, and its session store (if
        shared) reachable."""
        if self.draining:
            return False, "draining"
        if not self.listening:
            return False, "starting"
        for check in self.readiness_checks:
            why = check()
            if why is not None:
                return False, why
        return True, "ready"

    async def _start_metrics(self) -> bool:
        where = self.settings.metrics.listen
        if not where:
            return True
        self.metrics = MetricsServer(self)
        return await self.metrics.listen_at(where, log)

    async def _start_admin(self, server: Server) -> bool:
        path = self.settings.admin.socket
        if not path:
            return True
        self.admin = admin = AdminServer(server, path)
        try:
            await admin.start()
        except AdminError as exc:
            self.admin = None
            log.error("%s", exc, extra=_fields("listen-failed", address=path, error=str(exc)))
            return False
        log.info("admin socket %s (mode 0600)", path, extra=_fields("admin", address=path))
        return True

    async def _start_door(self, server: Server, path: str | None) -> bool:
        """A worker of ``--workers``: answer the supervisor's metrics and admin requests."""
        if path is None:
            return True
        self.admin = door = WorkerDoor(server, path, self)
        try:
            await door.start()
        except AdminError as exc:
            self.admin = None
            log.error("%s", exc, extra=_fields("listen-failed", address=path, error=str(exc)))
            return False
        return True

    async def _stop_side_doors(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
        if self.admin is not None:
            await self.admin.close()

    def stop(self) -> None:
        """Drain and exit, as SIGTERM does."""
        if self._stop is not None:
            self._stop.set()

    def _warn_open_auth(self) -> None:
        if self.settings.auth.mode != "open":
            return
        remote = [str(a) for a in self.prepared.listens if not a.is_loopback]
        if remote:
            log.warning(
                "listening on %s with auth mode open: only loopback clients are admitted, "
                "every remote client will be refused (use --auth token-file or mutual-tls)",
                ", ".join(remote),
                extra=_fields("open-auth-remote", addresses=remote),
            )

    # ----------------------------------------------------------------- reload

    def reload(self) -> None:
        """SIGHUP: read the configuration again and apply what can change live.

        Log level and format, limits, the token file (read again even if its name did
        not change), the channels app's policies and access rules, and the TLS
        certificate and key take effect now; open sessions keep their transports. Any
        other change is reported as waiting for a restart. If anything in the new
        configuration is wrong, nothing is applied and an ERROR says what.
        """
        if self.draining:  # stopping: nothing to reload, and READY=1 would contradict STOPPING=1
            log.warning("SIGHUP ignored while draining", extra=_fields("reload-ignored"))
            return
        self.notifier.reloading()
        try:
            self._reload()
        finally:
            self.notifier.ready(self._status())

    def _reload(self) -> None:
        old = self.settings
        try:
            loaded = self.load_again()
            new = loaded.settings
            prepare(new)  # everything the new configuration names is there and valid
            changed = config.changed(old, new)
            restart = [name for name in changed if not config.spec(*name.split(".", 1)).reload]
            live = [name for name in changed if name not in restart]
            effective = _keep(new, old, restart)
            # From what will be in force (e.g. mutual-tls needs the client CA the running
            # listeners were started with), not merely from the file.
            auth = authenticator(effective)
            certificate = self._reload_certificate(effective.tls)  # last: it changes things
        except ValueError as exc:
            log.error(
                "SIGHUP: configuration not reloaded, the old settings stay in force: %s",
                exc,
                extra=_fields("reload-failed", error=str(exc)),
            )
            return
        self.settings = effective
        server = self.server
        if server is not None:
            server.reconfigure(
                dataclasses.replace(
                    server_config(effective, auth),
                    remembered_ended=server.config.remembered_ended,
                    close_grace=server.config.close_grace,
                )
            )
        reconfigure = getattr(self.app, "reconfigure", None)
        if reconfigure is not None and any(name.startswith("channels.") for name in live):
            reconfigure(effective.channels)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        done = []
        if certificate is not None:
            done.append(f"TLS certificate {certificate}")
        if isinstance(auth, TokenFileAuthenticator):
            done.append(f"token file {auth.path} ({len(auth.entries)} identities)")
        shown = [f"{name}={_text(config.value(new, name))}" for name in live]
        done.append(f"changed: {', '.join(shown)}" if shown else "no live setting changed")
        waiting = f"; needs a restart: {', '.join(restart)}" if restart else ""
        log.info(
            "SIGHUP: reloaded %s%s",
            "; ".join(done),
            waiting,
            extra=_fields("reloaded", changed=live, restart=restart),
        )
        if "server.log_level" in live or "server.log_format" in live:  # after the line above,
            # so that a level raised to WARNING still shows what the reload did
            configure_logging(effective.server.log_format, effective.server.log_level)

    def _reload_certificate(self, tls: TlsSection) -> str | None:
        """Load the (possibly renamed) certificate and key into the live context."""
        setup = self.prepared.tls
        if setup is None:
            return None
        reloader = setup.reloader
        before = reloader.cert_file, reloader.key_file
        reloader.cert_file, reloader.key_file = Path(tls.cert), Path(tls.key)
        try:
            return describe(reloader.reload())
        except ValueError:
            reloader.cert_file, reloader.key_file = before
            raise


def _keep(new: Settings, old: Settings, names: list[str]) -> Settings:
    """*new*, with the settings in *names* (those needing a restart) as in *old*."""
    sections: dict[str, Any] = {}
    for name in names:
        section, _, key = name.partition(".")
        sections.setdefault(section, {})[key] = config.value(old, name)
    replaced = {
        section: dataclasses.replace(getattr(new, section), **values)
        for section, values in sections.items()
    }
    return dataclasses.replace(new, **replaced)


def _text(value: Any) -> str:
    return config.toml_value(value)
