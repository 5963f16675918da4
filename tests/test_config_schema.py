"""The settings schema: every setting has a range or choices and a doc, values are checked
against it at load time with errors naming setting, value, range and source, CONFIG.md is
the schema's reference, and ``sessiond config check|show`` run as subprocesses."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sessiond_client.protocol import Params

from sessiond import config
from sessiond.channels import ChannelsConfig
from sessiond.cli import build_parser
from sessiond.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_spec_with_a_doc_and_its_default_is_allowed() -> None:
    for name in config.names():
        section, _, key = name.partition(".")
        spec = config.spec(section, key)
        assert spec.doc and "\n" not in spec.doc, name
        assert spec.problem(config.default(name)) is None, name
    assert set(config.PROTOCOL) == {f.name for f in dataclasses.fields(Params)}


def test_config_md_is_the_generated_reference() -> None:
    text = (ROOT / "CONFIG.md").read_text()
    assert text == config.reference(), "run: sessiond config reference > CONFIG.md"
    for name in config.names():
        section, _, key = name.partition(".")
        assert f"## [{section}]" in text and f"| `{key}` |" in text


def test_every_flag_is_an_option_of_serve() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    options = {o for action in serve._actions for o in action.option_strings}
    assert set(config.FLAGS.values()) <= options
    assert set(config.FLAGS) <= set(config.names())


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("[server]\ndrain_timeout = -5\n", ["server.drain_timeout", "-5", "0 to 86400 s"]),
        ("[server]\nmax_sessions = 0\n", ["server.max_sessions", "0", "1 to 100000000"]),
        ("[server]\nlisten = []\n", ["server.listen", "[]", "at least 1 item"]),
        ("[server]\nlisten = ['udp://h:1']\n", ["server.listen", "udp://h:1", "tcp://HOST:PORT"]),
        (
            "[protocol]\nheartbeat_interval = -1\n",
            ["protocol.heartbeat_interval", "-1", "more than 0 s"],
        ),
        ("[server]\nlog_level = 'verbose'\n", ["server.log_level", "verbose", "DEBUG | INFO"]),
        ("[tls]\nidle_memory = 'small'\n", ["tls.idle_memory", "small", "compact | fast"]),
        ("[metrics]\nlisten = 'nowhere'\n", ["metrics.listen", "nowhere", "HOST:PORT"]),
        (f"[admin]\nsocket = '/{'x' * 120}'\n", ["admin.socket", "at most 107 bytes"]),
        ("[channels]\nacl = ['alice may a/#']\n", ["channels.acl", "acl rule"]),
        ("[channels]\nretained = ['a/#/b']\n", ["channels.retained", "a/#/b"]),
        ("[server]\nlisten_on = []\n", ["unknown setting server.listen_on", "server.listen?"]),
        ("[server]\ndrain_timeout = nan\n", ["server.drain_timeout", "nan", "0 to 86400 s"]),
        ("[protocol]\nheartbeat_interval = nan\n", ["protocol.heartbeat_interval", "more than 0"]),
        (
            "[protocol]\nheartbeat_min = 400\n",
            ["protocol.heartbeat_min = 400", "protocol.heartbeat_max = 300"],
        ),
    ],
)
def test_bad_file_values_name_setting_value_range_and_file(
    tmp_path: Path, text: str, parts: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    for part in [*parts, str(path)]:
        assert part in message, (part, message)


def test_tls_idle_memory_is_compact_unless_set_to_fast(tmp_path: Path) -> None:
    assert config.load().tls.idle_memory == "compact"
    path = tmp_path / "fast.toml"
    path.write_text("[tls]\nidle_memory = 'fast'\n")
    assert config.load(path).tls.idle_memory == "fast"
    assert config.load(env={"SESSIOND_TLS_IDLE_MEMORY": "fast"}).tls.idle_memory == "fast"
    with pytest.raises(ConfigError, match=r"tls\.idle_memory = 'Fast' \(from environment "):
        config.load(env={"SESSIOND_TLS_IDLE_MEMORY": "Fast"})


def test_bad_environment_and_flag_values_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"server\.listen = '' \(from environment "):
        config.load(env={"SESSIOND_SERVER_LISTEN": ""})
    with pytest.raises(ConfigError, match=r"from flag --log-level\): expected DEBUG"):
        config.load(flags={"server.log_level": "verbose"})
    with pytest.raises(
        ConfigError, match=r"protocol\.heartbeat_interval = 'nan' \(from environment "
    ):
        config.load(env={"SESSIOND_PROTOCOL_HEARTBEAT_INTERVAL": "nan"})
    assert config.load(flags={"server.log_level": "debug"}).server.log_level == "DEBUG"


def test_stray_variables_are_ignored_with_a_warning_unless_they_look_like_settings() -> None:
    loaded = config.load_with_sources(env={"SESSIOND_FAULT_SEED": "7", "SESSIOND_CONFIG": "x"})
    assert loaded.warnings == ["environment SESSIOND_FAULT_SEED is not a setting: ignored"]
    with pytest.raises(ConfigError, match=r"unknown setting server\.colour"):
        config.load(env={"SESSIOND_SERVER_COLOUR": "blue"})
    with pytest.raises(ConfigError, match="did you mean SESSIOND_SERVER_LISTEN"):
        config.load(env={"SESSIOND_SERVR_LISTEN": "tcp://127.0.0.1:1"})


def test_sources_say_where_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[server]\nmax_sessions = 10\n")
    loaded = config.load_with_sources(
        path, {"SESSIOND_SERVER_DRAIN_TIMEOUT": "3"}, {"server.app": "echo"}
    )
    assert loaded.sources["server.max_sessions"] == f"file {path}"
    assert loaded.sources["server.drain_timeout"] == "environment SESSIOND_SERVER_DRAIN_TIMEOUT"
    assert loaded.sources["server.app"] == "flag --app"
    assert loaded.sources["protocol.window_bytes"] == "default"
    shown = config.show(loaded)
    assert re.search(r"^max_sessions = 10 +# file .*s\.toml$", shown, re.M)
    # what show prints is itself a config file that loads to the same settings
    again = tmp_path / "shown.toml"
    again.write_text(shown)
    assert config.load(again) == loaded.settings


def test_embedders_get_the_same_checks() -> None:
    with pytest.raises(ValueError, match=r"channels\.max_subscriptions = 0"):
        ChannelsConfig(max_subscriptions=0)


def sessiond(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return subprocess.run(
        [sys.executable, "-m", "sessiond", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def test_config_check_and_show_as_commands(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[server]\nmax_sessions = 50\napp = 'echo'\n")
    result = sessiond("config", "check", str(good))
    assert result.returncode == 0 and f"{good}: ok" in result.stdout, result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\ndrain_timeout = -5\n")
    result = sessiond("config", "check", str(bad))
    assert result.returncode == 2
    assert "server.drain_timeout = -5" in result.stderr and str(bad) in result.stderr
    bad.write_text("[server]\ndrain_timeout = -5\nmax_sessions = 0\n[limits]\nread_slce = 1\n")
    result = sessiond("config", "check", str(bad), env={"SESSIOND_LIMITS_RETRY_AFTER": "x"})
    problems = result.stderr.splitlines()  # every bad setting, one line each
    assert result.returncode == 2 and len(problems) == 4, result.stderr
    assert "server.drain_timeout = -5" in problems[0] and "server.max_sessions = 0" in problems[1]
    assert "limits.read_slice?" in problems[2] and "SESSIOND_LIMITS_RETRY_AFTER" in problems[3]
    # check goes as far as serve would before listening: a missing token file is found
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("[auth]\nmode = 'token-file'\ntoken_file = '/nonexistent/tokens'\n")
    result = sessiond("config", "check", str(tokens))
    assert result.returncode == 2 and "/nonexistent/tokens" in result.stderr
    admin = tmp_path / "admin.toml"
    admin.write_text("[admin]\nsocket = '/nonexistent/run/admin.sock'\n")
    result = sessiond("config", "check", str(admin))
    assert result.returncode == 2 and "no directory /nonexistent/run" in result.stderr
    result = sessiond(
        "config", "show", "--config", str(good), env={"SESSIOND_PROTOCOL_WINDOW_MESSAGES": "64"}
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^max_sessions = 50 +# file ", result.stdout, re.M)
    assert re.search(
        r"^window_messages = 64 +# environment SESSIOND_PROTOCOL_WINDOW_MESSAGES$",
        result.stdout,
        re.M,
    )
    assert re.search(r"^heartbeat_interval = 15.0 +# default$", result.stdout, re.M)


def test_serve_names_the_setting_of_a_bad_flag_and_starts_despite_a_stray_variable() -> None:
    result = sessiond("serve", "--log-level", "verbose")
    assert result.returncode == 2
    assert "server.log_level = 'verbose' (from flag --log-level)" in result.stderr
    result = sessiond("serve", env={"SESSIOND_SERVER_LISTEN": ""})
    assert result.returncode == 2 and "at least 1 item" in result.stderr
    # a stray variable is a warning: the daemon starts (and is stopped once listening)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "sessiond", "serve", "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SESSIOND_FAULT_SEED": "3"},
    )
    try:
        assert daemon.stderr is not None
        lines = []
        for line in daemon.stderr:
            lines.append(line)
            if "listening on" in line:
                break
        assert any("SESSIOND_FAULT_SEED is not a setting: ignored" in x for x in lines), lines
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
        daemon.wait()


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", 8)]
    path = tmp_path / "readme.toml"
    path.write_text(example)
    loaded = config.load_with_sources(path)
    assert loaded.sources["server.max_sessions"] == f"file {path}"
    assert loaded.settings == config.load()  # the example shows the defaults
