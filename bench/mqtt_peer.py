"""The mosquitto peer's load generator, paho-mqtt on the asyncio loop (the broker and
its configuration: bench/systems.py's PEERS)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from . import BenchError
from .loadgen import HOST, CpuClock, EchoResult, Share, shares_pass, split
from .pingpong import Pinger, PingPlan, PingResult, open_all, run_pass

SYSTEM = "mosquitto"
QOS = 1
#: paho's in-flight limit for a ping-pong client (one ping is out at a time). An echo
#: client's is its window, as sessiond's clients have: paho re-scans its whole table
#: of outgoing messages on every PUBACK (``Client._update_inflight``), which costs
#: it about 15 % of its rate at 1,024 against 128, but it is what the window asks.
PAHO_INFLIGHT = 128
#: paho's own periodic work (keepalive PINGREQ, retries), as its asyncio example does.
MISC_INTERVAL = 1.0

_ids = itertools.count()


class MqttConnection:
    """One paho client on the running asyncio loop, subscribed to its own topic
    (or to *topic*, which several clients may share)."""

    def __init__(
        self,
        window: int,
        on_payloads: Callable[[list[bytes], int], None] | None = None,
        topic: str | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client_id = f"bench-{os.getpid()}-{next(_ids)}"
        self.topic = topic or f"bench/{self.client_id}"
        self.on_payloads = on_payloads
        self.got: list[bytes] = []
        self.reads = self.writes = 0
        self.failure: str | None = None
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.subscribed: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._misc: asyncio.TimerHandle | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(window)
        client.max_queued_messages_set(0)  # no limit: the bench's own window bounds it
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client

    async def open(self, port: int, subscribe: bool = True) -> None:
        """Connect (a persistent session), then subscribe to the client's topic (QoS 1)
        unless *subscribe* is false (a client that only publishes)."""
        try:
            self.client.connect(HOST, port, keepalive=60)
        except OSError as exc:
            raise BenchError(f"{SYSTEM}: cannot connect: {exc}") from None
        await self.connected
        if subscribe:
            self.client.subscribe(self.topic, qos=QOS)
            await self.subscribed

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.topic, payload, qos=QOS)

    async def close(self) -> None:
        if self.closed.done():
            return
        self.client.disconnect()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5.0)
        except TimeoutError:
            if (sock := self.client.socket()) is not None:
                self.loop.remove_reader(sock)
                self.loop.remove_writer(sock)
                sock.close()

    # paho's hooks (client, userdata, ...: only the last arguments matter here) --------

    def _on_socket_open(self, *args: Any) -> None:
        sock = args[2]
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, self._read)
        self._misc = self.loop.call_later(MISC_INTERVAL, self._on_misc)

    def _on_socket_close(self, *args: Any) -> None:
        self.loop.remove_reader(args[2])
        self.loop.remove_writer(args[2])
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if not self.closed.done():
            self.closed.set_result(None)

    def _on_register_write(self, *args: Any) -> None:
        self.loop.add_writer(args[2], self._write)

    def _on_unregister_write(self, *args: Any) -> None:
        self.loop.remove_writer(args[2])

    def _read(self) -> None:
        now_ns = time.perf_counter_ns()
        rc = self.client.loop_read()
        if got := self.got:
            self.reads += 1
            self.got = []
            if self.on_payloads is not None:
                self.on_payloads(got, now_ns)
        if rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._fail(f"loop_read: {mqtt.error_string(rc)}")

    def _write(self) -> None:
        self.writes += 1
        if (rc := self.client.loop_write()) is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._fail(f"loop_write: {mqtt.error_string(rc)}")

    def _on_misc(self) -> None:
        self._misc = None
        if self.client.loop_misc() is MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._misc = self.loop.call_later(MISC_INTERVAL, self._on_misc)

    @staticmethod
    def _settle(future: asyncio.Future[None], what: str, reasons: list[ReasonCode]) -> None:
        if future.done():
            return
        if any(reason.is_failure for reason in reasons):
            future.set_exception(BenchError(f"{SYSTEM}: {what} {reasons}"))
        else:
            future.set_result(None)

    def _on_connect(self, *args: Any) -> None:  # (..., flags, reason, properties)
        self._settle(self.connected, "CONNACK", [args[3]])

    def _on_subscribe(self, *args: Any) -> None:  # (..., mid, reasons, properties)
        self._settle(self.subscribed, "SUBACK", args[3])

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = message.payload  # bytes, as paho builds it; a bytearray is copied
        self.got.append(payload if isinstance(payload, bytes) else bytes(payload))

    def _on_disconnect(self, *args: Any) -> None:  # (..., flags, reason, properties)
        if args[3].is_failure:
            self._fail(f"disconnected: {args[3]}")

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = f"{SYSTEM}: {why}"
        for future in (self.connected, self.subscribed):
            if not future.done():
                future.set_exception(BenchError(self.failure))


# ------------------------------------------------------------------- echo


async def echo(
    port: int,
    pool: list[bytes],
    messages: int,
    window: int,
    time_limit: float,
    server_cpu: CpuClock,
    *,
    sessions: int = 1,
) -> EchoResult:
    """One windowed echo pass over *sessions* clients, each up to *window* QoS 1 messages
    published and not yet back; all connected and subscribed before the clocks start."""
    shares = [Share(SYSTEM, pool, quota, window) for quota in split(messages, sessions)]
    conns = [MqttConnection(window) for _ in shares]

    def refill(index: int) -> None:
        for payload in shares[index].batch():
            conns[index].publish(payload)

    def back(index: int, got: list[bytes], _now: int) -> None:
        if shares[index].take(got):
            refill(index)

    async def start() -> None:
        for index, share in enumerate(shares):
            refill(index)
            share.ended()

    for index, conn in enumerate(conns):
        conn.on_payloads = functools.partial(back, index)
    try:
        await open_all(sessions, lambda index: conns[index].open(port))
        return await shares_pass(
            SYSTEM, shares, start, server_cpu, time_limit,
            lambda: sum(c.reads for c in conns), lambda: sum(c.writes for c in conns),
        )  # fmt: skip
    finally:
        await asyncio.gather(*(conn.close() for conn in conns), return_exceptions=True)


# ------------------------------------------------------------------- ping


class MqttPing(Pinger):
    """One MQTT client's pings: publish QoS 1 to its own topic, the delivery is the echo."""

    def __init__(self, plan: PingPlan, index: int) -> None:
        super().__init__(plan, index)
        # One ping is out at a time; paho's in-flight limit stays as in the echo, so a
        # ping never waits in paho's queue for the previous one's PUBACK.
        self.conn = MqttConnection(PAHO_INFLIGHT, self._on_payloads)

    def transmit(self, payload: bytes) -> None:
        self.conn.publish(payload)
        if self.conn.failure:
            self.finish_failed(self.conn.failure)

    def _on_payloads(self, payloads: list[bytes], now_ns: int) -> None:
        for payload in payloads:
            self.on_echo(payload, now_ns)


async def ping(plan: PingPlan, port: int, server_cpu: CpuClock) -> PingResult:
    """One ping-pong pass over *plan.connections* MQTT clients."""
    pingers: list[MqttPing] = []

    async def open_one(index: int) -> None:
        pinger = MqttPing(plan, index)
        pingers.append(pinger)
        await pinger.conn.open(port)

    try:
        await open_all(plan.connections, open_one)
        plan.begin()
        for pinger in pingers:
            pinger.start()
        return await run_pass(plan, [pinger.finished for pinger in pingers], server_cpu)
    finally:
        await asyncio.gather(*(p.conn.close() for p in pingers), return_exceptions=True)
