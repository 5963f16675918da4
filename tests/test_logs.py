"""Lifecycle log lines: one per event, text or JSON, never a credential or a payload."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

import sessiond
import sessiond.apps
from sessiond.auth import TokenFileAuthenticator
from sessiond.logs import JsonFormatter
from sessiond.server import ServerConfig
from tests.test_auth import client_for

SECRET = "tok-3b1f-very-secret"
PAYLOAD = b"payload-7d2c-private"


async def test_lifecycle_lines_and_no_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"carol {TokenFileAuthenticator.hash_token(SECRET)}\n")
    config = ServerConfig(authenticator=TokenFileAuthenticator(tokens))
    caplog.set_level(logging.INFO, logger="sessiond")
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        client = client_for(server, {"token": SECRET})
        await client.open()
        client.send(PAYLOAD)
        await client.pump_until(lambda: client.received == [PAYLOAD])
        await client.kill()
        await client.open()  # resume
        thief = client_for(server, "not the token")
        await thief.open()
        await client.close()
        for _ in range(100):
            if any(getattr(r, "fields", {}).get("event") == "closed" for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    records = [r for r in caplog.records if r.name == "sessiond"]
    events = [getattr(r, "fields", {}).get("event") for r in records]
    for expected in ("created", "detached", "resumed", "refused", "closed"):
        assert expected in events, events
    created = next(r for r in records if getattr(r, "fields", {}).get("event") == "created")
    assert created.fields["identity"] == "carol"  # type: ignore[attr-defined]
    assert len(created.fields["session"]) == 8  # type: ignore[attr-defined]
    formatter = JsonFormatter()
    for record in records:
        text = record.getMessage() + formatter.format(record)
        assert SECRET not in text and PAYLOAD.decode() not in text
        line = json.loads(formatter.format(record))
        assert line["level"] == "INFO" and line["message"]
