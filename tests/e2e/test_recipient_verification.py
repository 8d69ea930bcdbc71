"""Recipient verification at RCPT and no user enumeration, against the real ingress service:
a protected domain with a recipients list, one verified by call-out to its own server on
loopback (which knows some users), one whose server is down, and one with neither (as before).
VRFY and EXPN answer alike for everyone; nmap's enumeration and open-relay scripts find nothing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.db import create_engine
from moat.repository import MessageRecord, Repository
from tests.conftest import running_gateway
from tests.harness import Gateway, Sink, free_port
from tests.support.mailbox_server import MailboxServer, SilentServer

pytestmark = pytest.mark.e2e

# What nmap's smtp-enum-users tries (nselib/data/usernames.lst): the list knows some of them.
LISTED = ["root@example.test", "admin@example.test", "Alice@example.test", "*-list@example.test"]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[MailboxServer]:
    with MailboxServer(
        {"carol@callout.test", "root@callout.test"}, busy={"busy@callout.test"}
    ) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    relay_sink: Sink,
    internet_sink: Sink,
    mailbox: MailboxServer,
) -> Iterator[Gateway]:
    silent = SilentServer()
    with (
        silent,
        running_gateway(
            "sqlite",
            tmp_path_factory.mktemp("gw-verify"),
            relay_sink,
            internet_sink,
            start=False,
            domains={
                "example.test": {"relay": relay_sink.address, "recipients": LISTED},
                "callout.test": {"relay": mailbox.address, "verify": "callout"},
                "down.test": {"relay": f"127.0.0.1:{free_port()}", "verify": "callout"},
                "hung.test": {"relay": silent.address, "verify": "callout"},
            },
            callout={"timeout": 1.5},
        ) as gw,
    ):
        gw.start("ingress")  # every answer here is given at RCPT: the rest need not run
        yield gw


def rcpt(gateway: Gateway, *addresses: str) -> list[tuple[int, str]]:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        client.mail("sender@outside.test")
        return [(code, text.decode()) for code, text in (client.rcpt(a) for a in addresses)]


def test_listed_recipients_pass_and_others_get_550_5_1_1(gateway: Gateway) -> None:
    answers = rcpt(
        gateway,
        "alice@example.test",
        "ALICE@Example.Test",
        "sales-list@example.test",
        "postmaster@example.test",
        "mallory@example.test",
        "sales-list-x@example.test",
    )
    assert [code for code, _ in answers] == [250, 250, 250, 250, 550, 550]
    assert answers[4][1] == "5.1.1 <mallory@example.test>: Recipient address rejected: User unknown"


def test_a_message_is_accepted_for_the_known_recipients_only(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "sender@outside.test",
            ["alice@example.test", "nobody@example.test"],
            b"Subject: x\r\n\r\nhello\r\n",
        )
    assert list(refused) == ["nobody@example.test"]
    assert refused["nobody@example.test"][0] == 550
    # Queued for alice alone: nobody@ was refused in the dialogue, so no bounce for it later.
    assert [r.address for r in stored(gateway, client.last_queue_id).recipients] == [
        "alice@example.test"
    ]


def stored(gateway: Gateway, message_id: str) -> MessageRecord:
    async def get() -> MessageRecord | None:
        repository = Repository(create_engine(gateway.config["database_url"]))
        try:
            return await repository.get(message_id)
        finally:
            await repository.close()

    record = asyncio.run(get())
    assert record is not None, message_id
    return record


def test_domains_without_verification_accept_anyone_as_before(
    gateway: Gateway, mailbox: MailboxServer
) -> None:
    before = mailbox.probes()
    # other.example.test is a protected domain of the test configuration with neither setting.
    assert [c for c, _ in rcpt(gateway, "whoever-7f3@other.example.test")] == [250]
    assert mailbox.probes() == before


def test_callout_asks_the_domains_server_once_per_address(
    gateway: Gateway, mailbox: MailboxServer
) -> None:
    answers = rcpt(gateway, "carol@callout.test", "dave@callout.test")
    assert answers[0][0] == 250
    assert answers[1] == (
        550,
        "5.1.1 <dave@callout.test>: Recipient address rejected: User unknown",
    )
    assert mailbox.probes_for("carol@callout.test") == 1
    assert mailbox.probes_for("dave@callout.test") == 1
    # Later sessions get the cached answers, positive and negative: no probe is sent.
    for _ in range(3):
        assert [c for c, _ in rcpt(gateway, "Carol@callout.test", "dave@callout.test")] == [
            250,
            550,
        ]
    assert mailbox.probes_for("carol@callout.test") == 1
    assert mailbox.probes_for("dave@callout.test") == 1
    assert mailbox.handler.mail_froms[-1] == "<>"


def test_callout_failures_are_temporary(gateway: Gateway, mailbox: MailboxServer) -> None:
    (busy,) = rcpt(gateway, "busy@callout.test")
    assert busy[0] == 450 and busy[1].startswith("4.1.1 <busy@callout.test>: ")
    (down,) = rcpt(gateway, "carol@down.test")
    assert down[0] == 451 and down[1].startswith("4.4.3 <carol@down.test>: ")
    (hung,) = rcpt(gateway, "carol@hung.test")
    assert hung[0] == 451 and hung[1].startswith("4.4.3 <carol@hung.test>: ")
    # Nothing of the server behind us is passed on: not its address, not its reply.
    for _, text in (busy, down, hung):
        assert "127.0.0.1" not in text and "Mailbox busy" not in text


def test_vrfy_and_expn_answer_alike_for_everyone(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        vrfy = {
            arg: client.verify(arg)
            for arg in (
                "alice@example.test",  # listed
                "mallory@example.test",  # not listed
                "carol@callout.test",  # known to the domain's server
                "dave@callout.test",  # unknown to it
                "root",
                "<<<not an address",
            )
        }
        expn = {arg: client.expn(arg) for arg in ("root", "sales-list@example.test", "nobody")}
    assert set(vrfy.values()) == {
        (252, b"2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
    }
    assert set(expn.values()) == {(502, b"5.5.1 EXPN not available")}


# --- nmap --------------------------------------------------------------------------------------


def nmap(gateway: Gateway, *script_args: str) -> str:
    scripts = "+smtp-open-relay,+smtp-enum-users,+smtp-commands"  # "+": whatever the port
    command = ["nmap", "-Pn", "-n", "-sT", "-p", str(gateway.smtp_port), "--script", scripts]
    if script_args:
        command += ["--script-args", ",".join(script_args)]
    result = subprocess.run(
        [*command, "127.0.0.1"], capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nmap_finds_no_open_relay_and_no_users(gateway: Gateway) -> None:
    if shutil.which("nmap") is None:
        pytest.skip("nmap is not installed (scripts/ensure-nmap.sh installs Debian's, as root)")
    # VRFY and EXPN, with the protected domain whose list has root and admin.
    out = nmap(
        gateway, "smtp-enum-users.methods={VRFY,EXPN}", "smtp-enum-users.domain=example.test"
    )
    Path(gateway.workdir / "nmap.txt").write_text(out)
    assert "smtp-commands: moat.test" in out, out  # the scripts did run
    enum = _script_output(out, "smtp-enum-users")
    assert "Couldn't find any accounts" in enum, out
    assert not re.search(r"\b(root|admin|administrator|test|user|guest)\b", enum), out
    relay = _script_output(out, "smtp-open-relay")
    assert "Server doesn't seem to be an open relay" in relay, out
    assert "Server is an open relay" not in out, out
    # By RCPT, the recipient check itself, nmap learns what RCPT answers, the listed users of
    # the domain, and nothing more. (This also shows the scan above could have found them.)
    out = nmap(gateway, "smtp-enum-users.methods={RCPT}", "smtp-enum-users.domain=example.test")
    found = set(re.findall(r"^\|[ _]+(\w+)\s*$", _script_output(out, "smtp-enum-users"), re.M))
    assert found == {"root", "admin"}, out


def _script_output(out: str, script: str) -> str:
    """The lines of one script's section in nmap's normal output."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {script}:") or line.startswith(f"|_{script}:"):
            section = [line]
            if line.startswith("|_"):
                return line
            for rest in lines[i + 1 :]:
                section.append(rest)
                if rest.startswith("|_"):
                    break
            return "\n".join(section)
    raise AssertionError(f"no {script} output in:\n{out}")
