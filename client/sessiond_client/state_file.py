"""``state_file=PATH``: a client session that survives a restart of its process.

One SQLite database (standard library) holds the session ID, the credential, the
sequence numbers and every sent-but-unacknowledged payload. The client writes it
before any byte leaves, in one transaction per change, so after a crash or a
reboot the file describes a state the server can resume from: nothing ``send``
accepted is lost, and nothing the application already received comes again.

The database is opened in exclusive locking mode: a second process using the same
file gets :class:`StateFileError` instead of a shared, corrupted session.
"""

from __future__ import annotations

import sqlite3
from os import PathLike

from .protocol import SessiondError, Snapshot

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    session_id BLOB NOT NULL,
    credential BLOB NOT NULL,
    next_seq INTEGER NOT NULL,
    acked INTEGER NOT NULL,
    consumed INTEGER NOT NULL,
    window_messages INTEGER NOT NULL,
    window_bytes INTEGER NOT NULL,
    max_payload INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS unacked (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
"""


class StateFileError(SessiondError):
    """The state file cannot be used: locked by another process, corrupt, or too new."""


class StateFile:
    """The durable copy of one client session; see the module docstring."""

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = path
        try:
            # check_same_thread=False: the blocking facade opens it on the caller's
            # thread and uses it on its event-loop thread, one at a time.
            self._db = db = sqlite3.connect(
                path, timeout=0.5, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateFileError(f"{path}: {exc}") from None
        try:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            db.execute("BEGIN EXCLUSIVE")  # held until close(): one process per file
            db.execute("COMMIT")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateFileError(f"{path}: schema {version} is newer than {SCHEMA_VERSION}")
            db.executescript(f"{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};")
        except sqlite3.Error as exc:
            db.close()
            raise StateFileError(f"{path}: {exc}") from None
        except StateFileError:
            db.close()
            raise
        self._saved: Snapshot | None = None

    def load(self) -> Snapshot | None:
        """The saved session, or None when the file holds none."""
        try:
            row = self._db.execute(
                "SELECT session_id, credential, next_seq, acked, consumed,"
                " window_messages, window_bytes, max_payload FROM session"
            ).fetchone()
            if row is None:
                return None
            payloads = self._db.execute("SELECT seq, payload FROM unacked ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise StateFileError(f"{self.path}: {exc}") from None
        session_id, credential, next_seq, acked, consumed, w_messages, w_bytes, max_payload = row
        seqs = [seq for seq, _ in payloads]
        if seqs != list(range(acked + 1, next_seq)):
            raise StateFileError(f"{self.path}: unacknowledged messages do not match the seqs")
        try:
            snapshot = Snapshot(
                bytes(session_id),
                bytes(credential),
                next_seq,
                acked,
                consumed,
                w_messages,
                w_bytes,
                max_payload,
                tuple(bytes(payload) for _, payload in payloads),
            )
        except ValueError as exc:
            raise StateFileError(f"{self.path}: {exc}") from None
        self._saved = snapshot
        return snapshot

    def save(self, snapshot: Snapshot) -> None:
        """Make *snapshot* the durable state, writing only what changed since the last save."""
        saved = self._saved
        if saved == snapshot:
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if saved is None or saved.session_id != snapshot.session_id:
                db.execute("DELETE FROM unacked")
                first_new = snapshot.acked + 1
            else:
                if snapshot.acked > saved.acked:
                    db.execute("DELETE FROM unacked WHERE seq <= ?", (snapshot.acked,))
                first_new = max(saved.next_seq, snapshot.acked + 1)
            db.executemany(
                "INSERT INTO unacked (seq, payload) VALUES (?, ?)",
                [
                    (seq, snapshot.unacked[seq - snapshot.acked - 1])
                    for seq in range(first_new, snapshot.next_seq)
                ],
            )
            db.execute(
                "INSERT OR REPLACE INTO session VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    snapshot.session_id,
                    snapshot.credential,
                    snapshot.next_seq,
                    snapshot.acked,
                    snapshot.consumed,
                    snapshot.window_messages,
                    snapshot.window_bytes,
                    snapshot.max_payload,
                ),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StateFileError(f"{self.path}: {exc}") from None
        self._saved = snapshot

    def clear(self) -> None:
        """Forget the session (it ended): the next start opens a new one."""
        if self._saved is None and self._db.execute("SELECT 1 FROM session").fetchone() is None:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM unacked")
        db.execute("DELETE FROM session")
        db.execute("COMMIT")
        self._saved = None

    def close(self) -> None:
        self._db.close()
