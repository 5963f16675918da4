"""Issue 13, finding 4: the client's options are typed and an application's mypy sees them.

* After the README's install (``pip install -e ./client``), ``mypy --strict`` finds
  ``sessiond_client`` (a plain path in a ``.pth`` file, not an import hook mypy cannot
  follow) and its ``py.typed``, and checks a user script that uses every public name.
* A misspelt option of ``connect`` or a ``str`` payload is a mypy error, not a surprise
  at run time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import sessiond_client

ROOT = Path(__file__).parent.parent
TIMEOUT = 600.0  # pip fetches the build backend (setuptools) as the README's install does

#: A user's script: every name in ``sessiond_client.__all__`` appears in it.
USER_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import ssl

    import sessiond_client
    from sessiond_client import (
        ChannelError,
        Channels,
        CloseCode,
        ConnectFailed,
        Credentials,
        GoawayReceived,
        Notice,
        Params,
        ReconnectPolicy,
        Session,
        SessiondError,
        SessionLost,
        SessionLostEvent,
        SessionStarted,
        State,
        StateFileError,
        SyncChannels,
        SyncSession,
        __version__,
        connect,
        connect_sync,
        tls_context,
    )


    def describe(notice: Notice) -> str:
        if isinstance(notice, SessionLostEvent):
            return f"lost {notice.reason.name}, {len(notice.unacked)} in doubt"
        if isinstance(notice, SessionStarted):
            return f"new session replacing one lost with {notice.replaces}"
        assert isinstance(notice, GoawayReceived)
        return f"goaway, retry after {notice.retry_after}"


    async def run(url: str, token: Credentials) -> list[str]:
        context: ssl.SSLContext = tls_context()
        session: Session = await connect(
            url,
            credentials=token,
            ssl=context,
            params=Params(heartbeat_interval=5.0),
            policy=ReconnectPolicy(base=0.1, cap=5.0, max_attempts=10),
            wait_for_server=False,
            fresh_session=True,
            state_file="client.db",
        )
        try:
            await session.send(b"hello", timeout=1.0)
            reply: bytes = await session.recv()
            channels = Channels(session)
            await channels.publish("rooms/a", reply)
            await session.close(timeout=2.0)
        except ConnectFailed as failed:
            print(failed.address, failed.reason.name)
        except SessionLost as lost:
            undelivered: tuple[bytes, ...] = lost.undelivered
            print(lost.reason is CloseCode.UNKNOWN_SESSION, len(undelivered))
        except (StateFileError, ChannelError, SessiondError) as error:
            print(error)
        assert session.state is not State.CONNECTING
        return [describe(notice) for notice in session.notices]


    def blocking(url: str) -> None:
        with sessiond_client.connect_sync(url, wait_for_server=True) as session:
            synced: SyncSession = session
            synced.send(bytearray(b"x"))
            print(synced.poll(), SyncChannels(synced).poll(), __version__)
            print([describe(notice) for notice in synced.notices])
        print(connect_sync)


    print(asyncio.run(run("tls://127.0.0.1:7443", "token")))
    """
)

MISUSE = textwrap.dedent(
    """
    import sessiond_client


    async def main() -> None:
        session = await sessiond_client.connect("tcp://127.0.0.1:7420", polcy=None)
        await session.send("text")
        sessiond_client.connect_sync("tcp://127.0.0.1:7420", wait_for_sever=True)
    """
)


def mypy(script: Path, python: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "mypy", "--strict", "--no-incremental", script.name],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def bare_env() -> dict[str, str]:
    """This environment without the worktree's PYTHONPATH or a MYPYPATH."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}


def test_the_user_script_names_every_public_name() -> None:
    used = set(re.findall(r"\w+", USER_SCRIPT))
    assert set(sessiond_client.__all__) <= used


def test_mypy_finds_the_package_after_the_readme_install(tmp_path: Path) -> None:
    # A copy of client/ (the install writes its metadata into the source folder),
    # installed editable into a fresh virtual environment as the README does.
    source = tmp_path / "client"
    shutil.copytree(
        ROOT / "client",
        source,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".mypy_cache"),
    )
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=TIMEOUT,
    )
    python = str(venv / "bin" / "python")
    env = bare_env()
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    # A static path entry, which mypy follows (an import-hook finder it cannot see).
    (pth,) = (venv / "lib").glob("python3*/site-packages/__editable__.sessiond_client*.pth")
    assert pth.read_text().strip() == str(source)
    user = tmp_path / "app" / "user.py"
    user.parent.mkdir()
    user.write_text(USER_SCRIPT)
    checked = mypy(user, python, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_misspelt_option_or_a_str_payload_is_a_mypy_error(tmp_path: Path) -> None:
    script = tmp_path / "misuse.py"
    script.write_text(MISUSE)
    env = bare_env() | {"MYPYPATH": str(ROOT / "client")}
    checked = mypy(script, sys.executable, env)
    assert checked.returncode == 1
    assert 'Unexpected keyword argument "polcy" for "connect"' in checked.stdout
    assert 'Unexpected keyword argument "wait_for_sever" for "connect_sync"' in checked.stdout
    assert 'Argument 1 to "send" of "Session" has incompatible type "str"' in checked.stdout
