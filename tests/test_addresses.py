"""One address parser (sessiond_client.addresses) for the client's URLs and the daemon's
listeners: the same text means the same host, port and scheme to both."""

from __future__ import annotations

import pytest
from sessiond_client.addresses import Address, parse_address
from sessiond_client.client import parse_url

from sessiond.addresses import ListenAddress, parse_listen


@pytest.mark.parametrize(
    ("text", "host", "port", "tls"),
    [
        ("tcp://127.0.0.1:7420", "127.0.0.1", 7420, False),
        ("tls://[::1]:7443", "::1", 7443, True),
        ("tcp://localhost:1", "localhost", 1, False),
        ("tls://[fe80::1%lo]:9", "fe80::1%lo", 9, True),
    ],
)
def test_client_and_daemon_read_a_url_alike(text: str, host: str, port: int, tls: bool) -> None:
    assert parse_url(text) == (host, port, tls)
    listen = parse_listen(text)
    assert isinstance(listen, ListenAddress) and listen is not None
    assert (listen.host, listen.port, listen.tls) == (host, port, tls)
    assert str(listen) == text
    assert parse_address(text) == listen


@pytest.mark.parametrize(
    "bad",
    ["http://x:1", "tcp://nohost", "tcp://::1:5", "tcp://[nope]:5", "tcp://h:99999", "tcp://:5"],
)
def test_bad_urls_are_refused_by_both(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_url(bad)
    with pytest.raises(ValueError):
        parse_listen(bad)


def test_only_the_daemon_takes_a_bare_host_port() -> None:
    assert parse_listen("127.0.0.1:7420") == Address("tcp", "127.0.0.1", 7420)
    assert parse_listen("[::1]:9100", ("http",)) == Address("http", "::1", 9100)
    with pytest.raises(ValueError, match="tcp://HOST:PORT or tls://HOST:PORT"):
        parse_url("127.0.0.1:7420")
