"""schemathesis against the schema the running API serves, over real HTTPS: every check it has,
once with the admin token and once with a user's token. No 5xx, no status, media type, header
or body outside the schema, invalid input refused, valid input accepted, no way in without a
token. Bounded: a few examples per operation, a time budget per run. Registering a webhook is
left out (it would make the dispatcher POST to generated addresses); test_webhooks.py has it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Gateway

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def schemathesis(gateway: Gateway, secret: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{gateway.api_url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {secret}",
            "--tls-verify",
            str(gateway.workdir / "tls" / "api-cert.pem"),
            "--max-examples",
            "5",
            "--workers",
            "1",
            "--seed",
            "20261206",
            "--request-timeout",
            "10",
            "--no-color",
            # Registering fuzzed webhook URLs would have the dispatcher POST events (the
            # digests this run sends make some) to whatever address was generated, not only
            # loopback: tests/e2e/test_webhooks.py covers this operation against its own
            # receiver instead.
            "--exclude-operation-id",
            "create_webhook_v1_webhooks_post",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("who", ["admin", "user"])
def test_the_api_keeps_to_its_schema(gateway: Gateway, who: str, token: str) -> None:
    secret = gateway.token
    if who == "user":
        with gateway.http() as http:
            issued = http.post(
                "/v1/tokens", json={"name": "schema", "recipient": f"bob-{token}@example.test"}
            )
        assert issued.status_code == 201, issued.text
        secret = issued.json()["token"]
    result = schemathesis(gateway, secret)
    print(result.stdout[-3000:])  # the summary, shown with -s or on failure
    assert result.returncode == 0, result.stdout[-20000:]
    [cases] = [line for line in result.stdout.splitlines() if " generated, " in line]
    generated, passed = re.findall(r"(\d+) generated, (\d+) passed", cases)[0]
    assert int(generated) > 500 and generated == passed, cases
    assert "Traceback" not in gateway.log("api")
