"""TLS on the MX, authenticated submission and relay control, with real clients on loopback:
smtplib, raw sockets, swaks and openssl s_client (scripts/ensure-smtp-tools.sh)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moat.passwords import hash_password
from tests.conftest import running_gateway
from tests.harness import Gateway, Sink, free_port, make_message, wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
MAX_FAILURES = 3


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, relay_sink: Sink, internet_sink: Sink
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gw-tls")
    with running_gateway(
        "sqlite",
        workdir,
        relay_sink,
        internet_sink,
        smtp={"trusted_networks": ["127.0.0.2/32"]},
        submission={
            "listen": f"127.0.0.1:{free_port()}",
            "listen_tls": f"127.0.0.1:{free_port()}",
            "users": {"carol": hash_password(PASSWORD)},
            "max_auth_failures": MAX_FAILURES,
            "auth_failure_window": 300,
            "auth_failure_delay": 0.2,
        },
        domains={
            "example.test": {"relay": relay_sink.address},
            "strict.example.test": {
                "relay": relay_sink.address,
                "require_tls": {"senders": ["partner.test"], "networks": ["127.0.0.5/32"]},
            },
        },
    ) as gateway:
        yield gateway


def _port(gw: Gateway, key: str) -> int:
    return int(gw.config["submission"][key].rsplit(":", 1)[1])


def _context(gw: Gateway) -> ssl.SSLContext:
    """A client that verifies our generated certificate (it names 127.0.0.1)."""
    return ssl.create_default_context(cafile=gw.workdir / "tls" / "smtp-cert.pem")


def _smtp(gw: Gateway, port: int | None = None, source: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port or gw.smtp_port, timeout=30, source_address=(source, 0))


def _received(sink: Sink, token: str) -> bytes:
    found = wait_for(lambda: sink.with_token(token), 30, f"mail {token} at the sink")
    return found[0].data


def _our_received(data: bytes) -> str:
    """Our Received: field (the topmost one; delivery adds X-Moat-* and
    Authentication-Results above it), continuation lines included."""
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.split(r"\r\n(?![ \t])", header)
    return next(field for field in fields if field.startswith("Received:"))


# --- STARTTLS on the MX -------------------------------------------------------------------------


def test_starttls_is_offered_and_recorded_in_received(
    gw: Gateway, relay_sink: Sink, token: str
) -> None:
    message = make_message("alice@outside.test", ["bob@example.test"], token, "tls")
    with _smtp(gw) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # once is enough (RFC 3207)
        assert not client.has_extn("auth"), "the MX takes no passwords"
        assert client.docmd("AUTH", "PLAIN AGNhcm9sAHg=")[0] == 503
        client.sendmail("alice@outside.test", ["bob@example.test"], message.as_bytes())
    line = _our_received(_received(relay_sink, token))
    assert "(using TLSv1.3 with cipher TLS_" in line and " bits))" in line, line
    assert " with ESMTPS id " in line, line


def test_plain_text_mail_says_esmtp_without_tls(gw: Gateway, relay_sink: Sink, token: str) -> None:
    message = make_message("alice@outside.test", ["bob@example.test"], token, "plain")
    with _smtp(gw) as client:
        client.ehlo("client.test")
        client.sendmail("alice@outside.test", ["bob@example.test"], message.as_bytes())
    line = _our_received(_received(relay_sink, token))
    assert " with ESMTP id " in line and "using" not in line, line


def _read_reply(file: Any) -> bytes:
    lines = []
    while True:
        line = file.readline()
        assert line, f"connection closed after {lines!r}"
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


@pytest.mark.parametrize(
    "injected", [b"RSET\r\n", b"MAIL FROM:<injected@outside.test>\r\n"], ids=["rset", "mail"]
)
def test_commands_pipelined_before_the_handshake_are_discarded(
    gw: Gateway, injected: bytes
) -> None:
    """The STARTTLS injection class (CVE-2011-0411 in Postfix): what a man in the middle
    appends to STARTTLS in plain text must not be executed inside the TLS session."""
    with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as raw:
        file = raw.makefile("rb")
        assert _read_reply(file).startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        assert b"STARTTLS" in _read_reply(file)
        raw.sendall(b"STARTTLS\r\n" + injected)  # one write: one segment
        assert _read_reply(file).startswith(b"220 ")
        with _context(gw).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls_file = tls.makefile("rb")
            tls.sendall(b"EHLO client.test\r\n")
            ehlo = _read_reply(tls_file)
            # Had the injected command run, its reply would come first.
            assert ehlo.startswith(b"250-moat.test"), ehlo
            tls.sendall(b"MAIL FROM:<alice@outside.test>\r\n")
            assert _read_reply(tls_file).startswith(b"250 2.1.0"), "no MAIL was pending"
            tls.sendall(b"QUIT\r\n")
            assert _read_reply(tls_file).startswith(b"221")


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def _s_client(
    gw: Gateway, *options: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    starttls = [] if port else ["-starttls", "smtp"]
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port or gw.smtp_port}",
            *starttls,
            "-brief",
            *options,
        ],
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=30,
    )


@needs_openssl
def test_tls_1_2_with_an_aead_suite_is_accepted(gw: Gateway) -> None:
    done = _s_client(gw, "-tls1_2")
    assert done.returncode == 0, done.stderr
    assert "Protocol version: TLSv1.2" in done.stderr
    assert "Ciphersuite: ECDHE-ECDSA-" in done.stderr and "GCM" in done.stderr, done.stderr


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused(gw: Gateway, version: str) -> None:
    # SECLEVEL=0 lets this client offer the old protocols: the refusal is the server's.
    done = _s_client(gw, version, "-cipher", "DEFAULT@SECLEVEL=0")
    assert done.returncode != 0, done.stderr
    assert "Protocol version" not in done.stderr


@needs_openssl
@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-SHA",
        "DES-CBC3-SHA",
        "RC4-SHA",
    ],
)
def test_weak_tls_1_2_suites_are_refused(gw: Gateway, cipher: str) -> None:
    done = _s_client(gw, "-tls1_2", "-cipher", f"{cipher}@SECLEVEL=0")
    assert done.returncode != 0, done.stderr


# --- relay control ------------------------------------------------------------------------------


def test_untrusted_client_may_not_relay(gw: Gateway) -> None:
    with _smtp(gw) as client:  # 127.0.0.1: loopback is not trusted unless listed
        client.ehlo("client.test")
        client.mail("alice@outside.test")
        code, text = client.rcpt("someone@elsewhere.test")
    assert (code, text[:6]) == (554, b"5.7.1 ")


def test_trusted_network_may_relay(gw: Gateway, internet_sink: Sink, token: str) -> None:
    message = make_message("app@inside.test", ["someone@elsewhere.test"], token, "relay")
    with _smtp(gw, source="127.0.0.2") as client:
        client.ehlo("client.test")
        refused = client.sendmail("app@inside.test", ["someone@elsewhere.test"], message.as_bytes())
    assert not refused
    assert _received(internet_sink, token)


# --- require TLS for a domain -------------------------------------------------------------------


def test_domain_requires_tls_from_listed_senders(gw: Gateway) -> None:
    with _smtp(gw) as client:
        client.ehlo("client.test")
        client.mail("someone@mail.partner.test")
        assert client.rcpt("bob@strict.example.test") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        assert client.rcpt("bob@example.test")[0] == 250  # other domains: as before
        client.rset()
        client.mail("someone@other.test")  # not listed
        assert client.rcpt("bob@strict.example.test")[0] == 250
    with _smtp(gw) as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        client.mail("someone@mail.partner.test")
        assert client.rcpt("bob@strict.example.test")[0] == 250


def test_domain_requires_tls_from_listed_networks(gw: Gateway) -> None:
    with _smtp(gw, source="127.0.0.5") as client:
        client.ehlo("client.test")
        client.mail("anyone@other.test")
        assert client.rcpt("bob@strict.example.test")[0] == 530
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        client.mail("anyone@other.test")
        assert client.rcpt("bob@strict.example.test")[0] == 250


# --- submission ---------------------------------------------------------------------------------


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_submission_wants_tls_before_auth_and_mail(gw: Gateway) -> None:
    with _smtp(gw, _port(gw, "listen")) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), "AUTH is offered only over TLS"
        assert client.docmd("AUTH", f"PLAIN {_plain('carol', PASSWORD)}") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        assert client.docmd("MAIL", "FROM:<carol@outside.test>") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
        assert client.docmd("MAIL", "FROM:<carol@outside.test>") == (
            530,
            b"5.7.0 Authentication required",
        )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_authenticated_user_relays_anywhere_and_is_recorded(
    gw: Gateway, internet_sink: Sink, token: str, mechanism: str
) -> None:
    message = make_message("carol@outside.test", ["friend@elsewhere.test"], token, "sub")
    with _smtp(gw, _port(gw, "listen")) as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        client.user, client.password = "carol", PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        client.mail("carol@outside.test")
        assert client.rcpt("friend@elsewhere.test")[0] == 250
        code, text = client.data(message.as_bytes())
        assert code == 250, text
        queue_id = text.rsplit(b"queued as ", 1)[1].decode()
    line = _our_received(_received(internet_sink, token))
    assert " with ESMTPSA id " in line and "(using TLSv1.3" in line, line
    assert gw.message(queue_id)["submitted_by"] == "carol"


def test_implicit_tls_submission(gw: Gateway, internet_sink: Sink, token: str) -> None:
    message = make_message("carol@outside.test", ["friend@elsewhere.test"], token, "465")
    port = _port(gw, "listen_tls")
    with smtplib.SMTP_SSL("127.0.0.1", port, context=_context(gw), timeout=30) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.has_extn("auth")
        client.login("carol", PASSWORD)
        client.sendmail("carol@outside.test", ["friend@elsewhere.test"], message.as_bytes())
    assert " with ESMTPSA id " in _our_received(_received(internet_sink, token))


def test_mx_message_is_not_marked_submitted(gw: Gateway) -> None:
    queue_id = gw.send("alice@outside.test", ["bob@example.test"])
    assert gw.message(queue_id)["submitted_by"] is None


def test_bad_credentials_then_too_many_failures(gw: Gateway) -> None:
    port = _port(gw, "listen")
    with _smtp(gw, port, source="127.0.0.3") as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        # A wrong password and an unknown user get the same answer.
        assert client.docmd("AUTH", f"PLAIN {_plain('carol', 'wrong')}") == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        assert client.docmd("AUTH", f"PLAIN {_plain('nobody', 'wrong')}")[0] == 535
        code, text = client.docmd("AUTH", f"PLAIN {_plain('carol', 'wrong again')}")
        assert (code, text[:6]) == (421, b"4.7.0 "), text
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    # The count is per client IP: a new session from it is refused at once, even with the
    # right password; another client is not affected.
    with _smtp(gw, port, source="127.0.0.3") as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        assert client.docmd("AUTH", f"PLAIN {_plain('carol', PASSWORD)}")[0] == 421
    with _smtp(gw, port, source="127.0.0.4") as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        assert client.docmd("AUTH", f"PLAIN {_plain('carol', PASSWORD)}")[0] == 235


needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="no swaks")


def _swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--helo", "client.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_swaks
def test_swaks_submits_with_starttls_and_implicit_tls(
    gw: Gateway, internet_sink: Sink, token: str
) -> None:
    common = ["--from", "carol@outside.test", "--to", "friend@elsewhere.test"]
    auth = ["--auth", "PLAIN", "--auth-user", "carol", "--auth-password", PASSWORD]
    done = _swaks(
        "--port", str(_port(gw, "listen")), "--tls", *auth, *common, "--body", token + "-587"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = _swaks(
        "--port",
        str(_port(gw, "listen_tls")),
        "--tls-on-connect",
        *auth,
        *common,
        "--body",
        token + "-465",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _received(internet_sink, token + "-587") and _received(internet_sink, token + "-465")
    done = _swaks(
        "--port",
        str(_port(gw, "listen")),
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        "carol",
        "--auth-password",
        "not it",
        *common,
    )
    assert done.returncode != 0 and "535 5.7.8" in done.stdout, done.stdout


@needs_swaks
def test_swaks_pipelining_over_tls_to_the_mx(gw: Gateway, relay_sink: Sink, token: str) -> None:
    done = _swaks(
        "--port",
        str(gw.smtp_port),
        "--tls",
        "--pipeline",
        "--from",
        "alice@outside.test",
        "--to",
        "bob@example.test,carol@example.test",
        "--body",
        token,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with ESMTPS id" in _our_received(_received(relay_sink, token))


# --- users through the API ----------------------------------------------------------------------


def test_users_through_the_api(gw: Gateway) -> None:
    port = _port(gw, "listen")
    with gw.http() as http:
        created = http.post(
            "/v1/submission-users", json={"name": "dave", "password": "dave's long secret"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["source"] == "database"
        assert "hash" not in created.text and "secret" not in created.text
        again = http.post(
            "/v1/submission-users", json={"name": "dave", "password": "another long one"}
        )
        assert again.status_code == 409
        clash = http.post("/v1/submission-users", json={"name": "carol", "password": "x" * 20})
        assert clash.status_code == 409
        short = http.post("/v1/submission-users", json={"name": "erin", "password": "short"})
        assert short.status_code == 422
        listed = http.get("/v1/submission-users").json()
        assert [(u["name"], u["source"]) for u in listed["users"]] == [
            ("carol", "settings"),
            ("dave", "database"),
        ]
        reader = http.post("/v1/tokens", json={"name": "r", "role": "reader"}).json()["token"]
        as_reader = {"Authorization": f"Bearer {reader}"}
        assert http.get("/v1/submission-users", headers=as_reader).status_code == 403
        assert (
            http.post(
                "/v1/submission-users",
                json={"name": "mallory", "password": "x" * 20},
                headers=as_reader,
            ).status_code
            == 403
        )
    with _smtp(gw, port, source="127.0.0.6") as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        client.login("dave", "dave's long secret")
    with gw.http() as http:
        assert http.delete("/v1/submission-users/dave").status_code == 204
        assert http.delete("/v1/submission-users/dave").status_code == 404
        assert http.delete("/v1/submission-users/carol").status_code == 409
    with _smtp(gw, port, source="127.0.0.6") as client:
        client.starttls(context=_context(gw))
        client.ehlo("client.test")
        dave = _plain("dave", "dave's long secret")
        assert client.docmd("AUTH", f"PLAIN {dave}")[0] == 535


def test_certificate_was_generated(gw: Gateway) -> None:
    tls_dir = Path(gw.workdir) / "tls"
    assert (tls_dir / "smtp-cert.pem").exists()
    assert (tls_dir / "smtp-key.pem").stat().st_mode & 0o077 == 0


# --- sslyze: the TLS configuration as a scanner sees it ------------------------------------------

# Every suite we accept must be AEAD with forward secrecy: TLS 1.3's (all are) and, on TLS 1.2,
# ECDHE/DHE with GCM or ChaCha20-Poly1305.
_STRONG_TLS12 = re.compile(
    r"^TLS_(ECDHE|DHE)_(RSA|ECDSA)_WITH_(AES_(128|256)_GCM|CHACHA20_POLY1305)_"
)


def test_sslyze_finds_no_weak_protocol_or_cipher_on_starttls(gw: Gateway, tmp_path: Path) -> None:
    sslyze = Path(sys.executable).with_name("sslyze")
    report = tmp_path / "sslyze.json"
    done = subprocess.run(
        [
            str(sslyze),
            "--starttls",
            "smtp",
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--compression",
            "--heartbleed",
            "--openssl_ccs",
            "--fallback",
            "--reneg",
            f"--json_out={report}",
            f"127.0.0.1:{gw.smtp_port}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [server] = json.loads(report.read_text())["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", server.get("connectivity_error_trace")
    scans = server["scan_result"]

    def accepted(command: str) -> list[str]:
        scan = scans[command]
        assert scan["status"] == "COMPLETED", (command, scan.get("error_trace"))
        return [suite["cipher_suite"]["name"] for suite in scan["result"]["accepted_cipher_suites"]]

    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites"):
        assert accepted(old) == [], old
    assert accepted("tls_1_0_cipher_suites") == []
    assert accepted("tls_1_1_cipher_suites") == []
    tls12, tls13 = accepted("tls_1_2_cipher_suites"), accepted("tls_1_3_cipher_suites")
    assert tls12 and tls13, (tls12, tls13)
    weak = [name for name in tls12 if not _STRONG_TLS12.match(name)]
    assert weak == [], weak
    assert not scans["tls_compression"]["result"]["supports_compression"]
    assert not scans["heartbleed"]["result"]["is_vulnerable_to_heartbleed"]
    assert not scans["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"]
    assert scans["tls_fallback_scsv"]["result"]["supports_fallback_scsv"]
    reneg = scans["session_renegotiation"]["result"]
    assert not reneg["is_vulnerable_to_client_renegotiation_dos"]
    assert reneg["supports_secure_renegotiation"]
