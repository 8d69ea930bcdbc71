"""The private Rspamd the benches compare Moat with: its configuration and command line, in one
place for ``bench/scanner_bench.py`` (Rspamd scanning over HTTP, one worker) and
``bench/smtp_bench.py`` (Rspamd as a private Postfix's milter).

Every instance is private: a top-level config of our own that includes the stock rules and
scores (``$CONFDIR/common.conf``), its pid file, log, local config and databases under a
directory of the bench's, nothing shared with the system service, and no Redis (Bayes and the
Redis-backed modules stay off). Modules that talk to servers other than DNS are always off; in
the ``local`` profile so is every module that looks something up in DNS per message, so Rspamd
makes no DNS query per message (bench/README.md, "The Postfix+Rspamd peer").
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

RSPAMD = Path("/usr/bin/rspamd")
RSPAMD_CONFDIR = Path("/etc/rspamd")
ENSURE_RSPAMD = Path(__file__).resolve().parent.parent / "scripts" / "ensure-rspamd.sh"

# Rspamd modules switched off in every profile: they talk to servers other than DNS (fuzzy
# hashes over UDP to rspamd.com, DCC, update fetches) or need Redis, which the benches do not
# run (rspamd disables the Redis ones itself; listed so the configuration says so).
RSPAMD_OFF_ALWAYS = (
    "fuzzy_check",
    "dcc",
    "rspamd_update",
    "url_redirector",
    "greylist",
    "ratelimit",
    "replies",
    "neural",
    "reputation",
    "history_redis",
    "metric_exporter",
    "clickhouse",
    "elastic",
    "metadata_exporter",
    "antivirus",
    "external_services",
)
# Off in the default ``local`` profile too: every module that looks something up in DNS per
# message (blocklists, ASN, SPF/DKIM/DMARC, hfilter's HELO/From host checks). With them off
# and a ``Hostname`` header (no PTR lookup), rspamd makes no DNS query per message.
RSPAMD_OFF_LOCAL = ("rbl", "surbl", "emails", "asn", "spf", "dkim", "dmarc", "hfilter", "mx_check")
# The ``auth`` profile: as ``local``, but SPF, DKIM and DMARC run (against the bench's DNS), as
# Moat's auth check does: the like-for-like comparison when Moat's auth is on.
RSPAMD_AUTH = ("spf", "dkim", "dmarc")
PROFILES = ("local", "auth", "dns")


def rspamd_modules_off(profile: str) -> list[str]:
    if profile == "dns":
        return list(RSPAMD_OFF_ALWAYS)
    local = [m for m in RSPAMD_OFF_LOCAL if profile == "local" or m not in RSPAMD_AUTH]
    return list(RSPAMD_OFF_ALWAYS) + local


def ensure_rspamd(timeout: float = 900) -> str | None:
    """Install Debian's rspamd through scripts/ensure-rspamd.sh if it is missing (the package's
    service is not started; ``make test`` never runs this); return why it could not, or None
    when it is there."""
    if RSPAMD.exists():
        return None
    try:
        done = subprocess.run(
            [str(ENSURE_RSPAMD)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not install rspamd: {exc}"
    if done.returncode != 0 or not RSPAMD.exists():
        last = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return f"scripts/ensure-rspamd.sh failed (rc={done.returncode}): {' | '.join(last)}"
    return None


def write_config(
    root: Path,
    *,
    normal_port: int,
    workers: int,
    nameserver: str,
    retransmits: int,
    profile: str = "local",
    milter_port: int | None = None,
    header: str = "moat bench",
) -> Path:
    """Write ``root/rspamd.conf`` and its local config (``root/local``): ``workers`` normal
    workers on ``normal_port``, and with ``milter_port`` the proxy worker in milter mode in
    front of them, wired as Rspamd's Postfix guide does it (mail is accepted if Rspamd is
    down). DNS goes to ``nameserver`` (``host:port``). Returns the config's path."""
    if profile not in PROFILES:
        raise ValueError(f"unknown rspamd profile {profile!r}")
    local = root / "local"
    for sub in ("run", "log", "local/local.d", "local/override.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for module in rspamd_modules_off(profile):
        (local / "override.d" / f"{module}.conf").write_text("enabled = false;\n")
    if profile != "dns":  # the phishing module's per-URL DNS lookup (phishtank.rspamd.com)
        (local / "local.d" / "phishing.conf").write_text("phishtank_enabled = false;\n")
    # Mail from loopback counts as local, and local mail is DKIM/ARC-signed by default: an MX
    # scanning inbound mail signs nothing (and here there is no key to sign with).
    for module in ("dkim_signing", "arc"):
        (local / "local.d" / f"{module}.conf").write_text("sign_local = false;\n")
    (root / "options.override").write_text(
        f'dns {{ nameserver = ["{nameserver}"]; timeout = 1s; retransmits = {retransmits}; }}\n'
    )
    proxy = ""
    if milter_port is not None:
        proxy = f"""worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{milter_port}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{
        default = yes;
        hosts = "127.0.0.1:{normal_port}";
    }}
    count = 1;
    max_retries = 5;
    discard_on_reject = false;
    quarantine_on_reject = false;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}}
"""
    conf = root / "rspamd.conf"
    conf.write_text(
        f"""# {header}: a private rspamd, nothing shared with the system service
.include "$CONFDIR/common.conf"
options {{
    pidfile = "{root}/run/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(priority=10) "{root}/options.override"
}}
logging {{
    type = "file";
    filename = "{root}/log/rspamd.log";
    .include "$CONFDIR/logging.inc"
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{normal_port}";
    .include "$CONFDIR/worker-normal.inc"
    count = {workers};
}}
{proxy}"""
    )
    return conf


def command(root: Path, conf: Path, db_dir: Path) -> list[str]:
    """The command line that runs the instance ``write_config`` wrote, in the foreground, as
    ``_rspamd`` (its directories handed to that user) or, where there is no such user, as
    root, which rspamd wants said out loud (``-i``)."""
    try:
        user = pwd.getpwnam("_rspamd")
        owner = ["-u", "_rspamd", "-g", "_rspamd"]
        for path in (root / "run", root / "log", db_dir):
            os.chown(path, user.pw_uid, user.pw_gid)
    except KeyError:
        owner = ["-i"]
    argv = [str(RSPAMD), "-f", "-c", str(conf), *owner]
    for var, value in (
        ("CONFDIR", RSPAMD_CONFDIR),
        ("LOCAL_CONFDIR", root / "local"),
        ("DBDIR", db_dir),
        ("RUNDIR", root / "run"),
        ("LOGDIR", root / "log"),
    ):
        argv += ["--var", f"{var}={value}"]
    return argv
