"""Settings: defaults < file < environment < flags, and clear errors naming the setting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sessiond import config
from sessiond.config import ConfigError


def test_defaults_are_the_embedded_ones() -> None:
    settings = config.load()
    assert settings.server.listen == ("tcp://127.0.0.1:7420",)
    assert settings.server.app == "channels"
    assert settings.auth.mode == "open"
    assert settings.protocol.heartbeat_interval == 15.0


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "sessiond.toml"
    path.write_text(
        '[server]\nlisten = ["tcp://127.0.0.1:9000"]\nmax_sessions = 10\n'
        "[protocol]\nheartbeat_interval = 4.0\nwindow_messages = 64\n"
    )
    env = {"SESSIOND_PROTOCOL_HEARTBEAT_INTERVAL": "6", "SESSIOND_SERVER_MAX_SESSIONS": "20"}
    settings = config.load(path, env, {"server.max_sessions": 30})
    assert settings.server.listen == ("tcp://127.0.0.1:9000",)  # file
    assert settings.protocol.window_messages == 64  # file
    assert settings.protocol.heartbeat_interval == 6.0  # environment over file
    assert settings.server.max_sessions == 30  # flag over environment
    assert config.load(path, env).server.max_sessions == 20


def test_environment_lists_are_comma_separated() -> None:
    env = {"SESSIOND_SERVER_LISTEN": "tcp://127.0.0.1:1, tls://[::1]:2"}
    assert config.load(env=env).server.listen == ("tcp://127.0.0.1:1", "tls://[::1]:2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlisten_on = []\n", "unknown setting server.listen_on"),
        ("[servr]\nlisten = []\n", "unknown section 'servr'"),
        ("[protocol]\nwindow_messages = 'many'\n", "protocol.window_messages"),
        ("[protocol]\nwindow_messages = true\n", "protocol.window_messages"),
        ("[server]\nlog_format = 'xml'\n", "server.log_format"),
        ("[auth]\nmode = 'magic'\n", "auth.mode"),
        ("[protocol]\nheartbeat_interval = -1\n", "heartbeat_interval"),
        ("listen = 1\n", "must be a [section] table"),
        ("[server\n", "config file"),
    ],
)
def test_invalid_file_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path)


def test_invalid_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SESSIOND_PROTOCOL_WINDOW_MESSAGES"):
        config.load(env={"SESSIOND_PROTOCOL_WINDOW_MESSAGES": "lots"})
    with pytest.raises(ConfigError, match=r"unknown setting server\.colour"):
        config.load(env={"SESSIOND_SERVER_COLOUR": "blue"})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        config.load(tmp_path / "absent.toml")


def test_every_setting_has_a_unique_name() -> None:
    listed = config.names()
    assert len(listed) == len(set(listed))
    assert "protocol.heartbeat_interval" in listed and "server.listen" in listed


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--config", "/nonexistent/sessiond.toml"], {}, "config file"),
        ([], {"SESSIOND_PROTOCOL_WINDOW_MESSAGES": "lots"}, "SESSIOND_PROTOCOL_WINDOW_MESSAGES"),
        ([], {"SESSIOND_SERVER_NOPE": "1"}, "unknown setting server.nope"),
        (["--auth", "token-file"], {}, "--token-file"),
        (["--auth", "mutual-tls"], {}, "--tls-client-ca"),
        (["--auth", "magic"], {}, "auth.mode"),
        (["--log-format", "xml"], {}, "server.log_format"),
        (["--log-level", "LOUD"], {}, "LOUD"),
        (["--app", "nosuchmodule:app"], {}, "nosuchmodule"),
    ],
)
def test_serve_refuses_bad_settings_at_start_up(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_serve(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reads_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sessiond.toml"
    path.write_text('[server]\nlisten = ["tls://127.0.0.1:0"]\n')
    result = run_serve("--config", str(path))
    assert result.returncode == 2 and "needs --tls-cert and --tls-key" in result.stderr
