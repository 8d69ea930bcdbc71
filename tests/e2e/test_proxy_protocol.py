"""PROXY protocol v1 and v2 on the SMTP listener: the proxied client address is the one the
limits, the logs, our Received: line and SPF see; without the header, no session."""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.test_ingress_limits import Client
from tests.harness import Gateway, wait_for

pytestmark = pytest.mark.e2e

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {source} 192.0.2.25 {port} 25\r\n".encode()


def proxy_v2(source: str, port: int = 40000) -> bytes:
    addresses = (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address("192.0.2.25").packed
        + struct.pack("!HH", port, 25)
    )
    # version 2, command PROXY; AF_INET, STREAM; then the addresses' length.
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def proxied_ingress(make_gateway: Callable[..., Gateway], **overrides: Any) -> Gateway:
    smtp = {"proxy_protocol": True, "proxy_protocol_timeout": 3, **overrides.pop("smtp", {})}
    gateway = make_gateway(start=False, smtp=smtp, **overrides)
    gateway.start("ingress")
    return gateway


def _queued(reply: tuple[int, bytes]) -> str:
    found = re.search(rb"queued as (\S+)", reply[1])
    assert reply[0] == 250 and found is not None, reply
    return found.group(1).decode()


@pytest.mark.parametrize("header", [proxy_v1, proxy_v2], ids=["v1", "v2"])
def test_the_proxied_address_is_recorded(
    make_gateway: Callable[..., Gateway], header: Callable[[str], bytes]
) -> None:
    gateway = proxied_ingress(make_gateway, limits={"greet_pause": 0})
    with Client(gateway.smtp_port, preamble=header("203.0.113.7")) as client:
        assert client.greeting is not None and client.greeting[0] == 220
        message_id = _queued(client.send("alice@outside.test", "bob@example.test"))
        assert client.command("MAIL FROM:<mallory@outside.test>")[0] == 250
        assert client.command("RCPT TO:<victim@elsewhere.test>")[0] == 554
    [stored] = (gateway.workdir / "spool").rglob(f"{message_id}*")
    received = stored.read_bytes().split(b"\r\n", 1)[0]
    assert received.startswith(b"Received: from client.test ([203.0.113.7])"), received
    # Log lines reach the file from a writer thread (moat/logs.py): wait for them, briefly.
    wait_for(
        lambda: f"queued {message_id} " in gateway.log("ingress")
        and "relay denied: mallory@outside.test" in gateway.log("ingress"),
        10,
        "the ingress's log lines",
    )
    assert f"queued {message_id} " in gateway.log("ingress")
    assert re.search(rf"queued {message_id} .* client=203\.0\.113\.7", gateway.log("ingress"))
    assert "relay denied: mallory@outside.test -> victim@elsewhere.test from 203.0.113.7" in (
        gateway.log("ingress")
    )


def test_spf_is_checked_for_the_proxied_address(make_gateway: Callable[..., Gateway]) -> None:
    """outside.test's SPF allows 127.0.0.0/8 only: from 203.0.113.7 (behind the proxy on
    loopback) it fails, from 127.0.0.9 it passes."""
    gateway = make_gateway(smtp={"proxy_protocol": True}, limits={"greet_pause": 0})
    results = {}
    for source in ("203.0.113.7", "127.0.0.9"):
        with Client(gateway.smtp_port, preamble=proxy_v1(source)) as client:
            message_id = _queued(client.send("alice@outside.test", "bob@example.test"))
        message = gateway.wait_status(message_id, {"delivered", "quarantined"})
        assert message["client_address"] == source
        symbols = {finding["symbol"] for finding in message["verdict"]["findings"]}
        results[source] = {symbol for symbol in symbols if symbol.startswith("SPF_")}
    assert results == {"203.0.113.7": {"SPF_FAIL"}, "127.0.0.9": {"SPF_PASS"}}


def test_a_connection_without_the_header_is_refused(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = proxied_ingress(make_gateway, limits={"greet_pause": 0})
    with Client(gateway.smtp_port, greet=False) as client:  # talks SMTP straight away
        client.sock.sendall(b"EHLO client.test\r\n")
        assert client.closed()
    with Client(gateway.smtp_port, greet=False) as silent:  # says nothing: cut at the timeout
        assert silent.closed()
    with Client(gateway.smtp_port, preamble=b"PROXY BOGUS\r\n", greet=False) as bad:
        assert bad.closed()


def test_limits_count_the_proxied_address(make_gateway: Callable[..., Gateway]) -> None:
    gateway = proxied_ingress(make_gateway, limits={"greet_pause": 0, "connections": 1})
    port = gateway.smtp_port
    with Client(port, preamble=proxy_v2("198.51.100.1")) as first:
        assert first.greeting is not None and first.greeting[0] == 220
        with Client(port, preamble=proxy_v1("198.51.100.1"), greet=False) as second:
            assert second.reply() == (421, b"4.7.0 Too many connections from your address")
        with Client(port, preamble=proxy_v1("198.51.100.2")) as other:  # same socket source
            assert other.greeting is not None and other.greeting[0] == 220


def test_a_v2_local_header_uses_the_connection_address(
    make_gateway: Callable[..., Gateway],
) -> None:
    """The balancer's own health check (v2 LOCAL, no addresses) is served as itself."""
    gateway = proxied_ingress(make_gateway, limits={"greet_pause": 0})
    local = V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    with Client(gateway.smtp_port, preamble=local, source="127.0.0.5") as client:
        assert client.greeting is not None and client.greeting[0] == 220
        message_id = _queued(client.send("alice@outside.test", "bob@example.test"))
    [stored] = (gateway.workdir / "spool").rglob(f"{message_id}*")
    assert stored.read_bytes().startswith(b"Received: from client.test ([127.0.0.5])")
