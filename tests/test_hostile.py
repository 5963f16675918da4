"""Issue 12's attacks against ``python -m sessiond serve`` over real sockets on 127.0.0.1:
one client must not exhaust the daemon (guarantee 9).

Each test runs one attacker (the blocking ones of :mod:`bench.hostile`, on a thread,
bounded in time) beside a canary session that keeps exchanging messages, and reads the
daemon's RSS from ``/proc``. Sizes are small (seconds of attack, not minutes);
``python -m bench.hostile`` runs the same attacks at the issue's scale and prints RSS
and the canary's latency. Nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sessiond_client.protocol.codec import encode_ping

from bench.hostile import blind_acker, open_raw, ping_flooder, send_bounded
from tests.coreclient import CoreClient
from tests.test_attacks import daemon_process, echo, rss_kib, started

MIB = 1024


async def canary_during(canary: CoreClient, attack: asyncio.Future[str]) -> int:
    """Echo through the canary until the attack is over; how many round trips it made."""
    count = 0
    while not attack.done():
        await echo(canary, b"canary %d" % count)
        count += 1
        await asyncio.sleep(0.005)
    return count


async def test_a_blind_acker_that_never_reads_is_no_longer_read(tmp_path: Path) -> None:
    """The attacker sends DATA and ACKs the echoes it never reads (blind ACKs). The
    daemon's output to it stops at the write buffer's high water mark, the daemon stops
    reading it (its sends stall), RSS stays within a few MiB, the canary keeps talking.
    Scale: until it stalls (at most 20 s), about 13 MB/s offered (before the fix: 38 ->
    238 MiB of RSS in the 20 s)."""
    with daemon_process(tmp_path, "") as (proc, port):
        canary = await started(port, proc)
        await echo(canary, b"first")
        baseline = rss_kib(proc.pid)
        attack = asyncio.ensure_future(asyncio.to_thread(blind_acker, port, 20.0))
        round_trips = await canary_during(canary, attack)
        outcome = attack.result()
        peak = rss_kib(proc.pid)
        await echo(canary, b"after")
        await canary.close()
    print(f"\nblind acker: {outcome}; RSS {baseline} -> {peak} KiB; canary {round_trips} echoes")
    assert outcome == "stalled", "the daemon kept reading a client that reads nothing"
    assert peak - baseline < 16 * MIB
    assert round_trips > 0


async def test_a_ping_flood_from_a_non_reader_is_no_longer_read(tmp_path: Path) -> None:
    """PINGs from a client that never reads the PONGs: the daemon stops reading it once
    its PONGs fill the write buffer; RSS bounded; the canary keeps talking (its latency
    is measured by ``python -m bench.hostile ping-flood``, not here)."""
    with daemon_process(tmp_path, "") as (proc, port):
        canary = await started(port, proc)
        await echo(canary, b"first")
        baseline = rss_kib(proc.pid)
        attack = asyncio.ensure_future(asyncio.to_thread(ping_flooder, port, 20.0))
        round_trips = await canary_during(canary, attack)
        outcome = attack.result()
        peak = rss_kib(proc.pid)
        await echo(canary, b"after")
        await canary.close()
    print(f"\nping flood: {outcome}; RSS {baseline} -> {peak} KiB; canary {round_trips} echoes")
    assert outcome == "stalled"
    assert peak - baseline < 16 * MIB
    assert round_trips > 0


async def test_a_transport_whose_output_is_not_read_is_closed_and_its_session_detaches(
    tmp_path: Path,
) -> None:
    """Past write_stall_timeout with its output above the high water mark, the transport
    is closed with LIMIT_EXCEEDED: the session detaches (it is not ended)."""
    config = "[limits]\nwrite_stall_timeout = 1.0\n"
    with daemon_process(tmp_path, config) as (proc, port):
        canary = await started(port, proc)

        def flood_then_wait() -> str:
            sock = open_raw(port)
            sock.setblocking(False)
            batch = b"".join(encode_ping(i) for i in range(4096))
            until = time.monotonic() + 30
            outcome = "sent"
            while outcome == "sent":  # until the daemon stops reading, then closes us
                outcome = send_bounded(sock, batch, until, stall=20.0)
            sock.close()
            return outcome

        outcome = await asyncio.to_thread(flood_then_wait)
        await echo(canary, b"still here")
        await canary.close()
    log = (tmp_path / "daemon.log").read_text()
    assert outcome == "closed", outcome
    assert "output not read" in log
    assert "detached" in log and "code=LIMIT_EXCEEDED" in log, log[-2000:]
