"""The C heap under many idle TLS transports: one glibc malloc setting, measured (issue 18).

Every TLS transport of uvloop allocates a 256 KiB read buffer (``SSL_READ_MAX_SIZE``)
with ``malloc`` and keeps it for its life. Only the pages a read touched are resident
(one, for an idle session), but only if glibc serves the block with its own ``mmap``:
once glibc has freed one such block its dynamic threshold rises above 256 KiB, and later
buffers are carved out of the heap, out of space a handshake's temporaries have just
touched and freed, so that far more of their pages stay resident.
:func:`map_large_blocks` fixes the threshold at 256 KiB (measured: 36.7 KiB of RSS per
idle TLS session before, 27.4 KiB after, 1,000 sessions; README, "Memory over TLS").

The price: every block of 256 KiB or more is then mapped and unmapped each time, fresh
pages faulted in, instead of being reused from the heap; a batch of output that large (a
window of 1 KiB messages) is one. Measured: about 1 us more server CPU per 1 KiB echoed
message over TCP and 2-3 us over TLS (of 5 and 8-9 us), within noise at 64 B. Only a
threshold set just while each TLS transport is made avoids that, and keeps little of the
saving (34.8 KiB per session: the buffers then fill the heap's free space).

The daemon no longer needs it: its TLS transports share one read buffer
(``ServerConfig.tls_shared_buffer``, the default; ``tls.idle_memory = "compact"``). An
embedder that keeps uvloop's TLS protocol (``tls_shared_buffer=False``) can still ask a
TLS listener for it with ``ServerConfig(map_large_blocks=True)``.

glibc only; elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h).
M_MMAP_THRESHOLD = -3
#: Blocks this large or larger get their own mapping: uvloop's 256 KiB TLS read buffer
#: does; a 256,000-byte TCP read (uvloop's ``UV_STREAM_RECV_BUF_SIZE``) copied into
#: bytes does not.
MMAP_THRESHOLD = 256 * 1024


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them
        libc.gnu_get_libc_version  # noqa: B018  (glibc's: musl has no such symbol)
    except (OSError, AttributeError):
        return None
    return libc


_mapped = False


def map_large_blocks() -> bool:
    """From now on, in this whole process, serve blocks of :data:`MMAP_THRESHOLD` bytes
    and more with their own ``mmap`` (which also ends glibc's dynamic threshold).
    Done once; True if set."""
    global _mapped
    if not _mapped:
        libc = _glibc()
        _mapped = libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _mapped
