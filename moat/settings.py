"""Moat's settings: one YAML file (path in ``MOAT_CONFIG``) plus environment overrides.

Precedence, highest first: values passed in code (tests), ``MOAT_*`` environment variables
(nested keys joined by ``__``, e.g. ``MOAT_SMTP__LISTEN``), the YAML file, then the defaults
below. The defaults are safe: no open relay (no protected domains means every RCPT is refused),
loopback-only listeners, and a placeholder admin token that is refused outside ``dev``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

if TYPE_CHECKING:
    from moat.symbols import SymbolTable

PLACEHOLDER_TOKEN = "change-me"


def split_host_port(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return value.strip("[]"), default_port
    return host.strip("[]"), int(port)


class RequireTlsSettings(BaseModel):
    """Mail to a protected domain that must come over TLS (STARTTLS) from these senders or
    client networks: otherwise ``530 5.7.0`` at RCPT (docs/ingress.md)."""

    # Envelope senders: an address (alice@partner.test), a domain (partner.test: it and its
    # subdomains), or "*" (everyone).
    senders: list[str] = []
    networks: list[str] = []  # client networks (CIDR)

    @field_validator("networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return _valid_networks(value)

    @field_validator("senders")
    @classmethod
    def _lowercase(cls, value: list[str]) -> list[str]:
        return [sender.strip().lower().rstrip(".") for sender in value if sender.strip()]


class DomainSettings(BaseModel):
    """A domain we protect: we accept its mail and relay it to its own mail server."""

    relay: str = Field(description="host:port of the organisation's mail server for this domain")
    require_tls: RequireTlsSettings = RequireTlsSettings()
    # Overrides of the global ``scanner`` section for mail to this domain, same keys and shape
    # (e.g. ``{spam_threshold: 8}``); merged over the global values at start-up.
    scanner: dict[str, Any] = {}
    # Recipient verification at RCPT (docs/recipient-verification.md): the domain's addresses,
    # exact or glob patterns ("*-list@example.test"), matched without regard to case; or
    # ``verify: callout``, an RCPT probe to ``relay``. Neither: every address is accepted.
    recipients: list[str] | None = None
    verify: Literal["callout"] | None = None
    # Greylisting for this domain's recipients; None: the global greylist.enabled.
    greylist: bool | None = None

    @field_validator("relay")
    @classmethod
    def _valid_relay(cls, value: str) -> str:
        split_host_port(value)
        return value

    @model_validator(mode="after")
    def _one_way_to_verify(self) -> DomainSettings:
        if self.recipients is not None and self.verify is not None:
            raise ValueError("set recipients or verify: callout, not both")
        return self


class CalloutSettings(BaseModel):
    """Call-out recipient verification (``domains.<name>.verify: callout``): an RCPT probe to
    the domain's relay, its answers cached as Postfix's address_verify does."""

    positive_ttl: float = Field(default=7 * 24 * 3600.0, gt=0)  # an address that exists
    negative_ttl: float = Field(default=3 * 3600.0, ge=0)  # an unknown one; 0: not cached
    timeout: float = Field(default=10.0, gt=0)  # seconds for a whole probe; then 451 4.4.3
    sender: str = ""  # MAIL FROM of the probe; "" is the null sender <>
    max_concurrent: int = Field(default=20, ge=1)  # probes in flight per ingress process
    max_entries: int = Field(default=100_000, ge=1)  # cached answers; the oldest go first


class SmtpSettings(BaseModel):
    listen: str = "127.0.0.1:2525"
    hostname: str = Field(default_factory=socket.getfqdn)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_received_headers: int = 50
    idle_timeout: float = 300.0
    # Client networks (CIDR) that may relay to any domain and are exempt from session limits.
    # Empty by default: not even loopback is trusted unless listed.
    trusted_networks: list[str] = []
    # STARTTLS on smtp.listen (TLS 1.2 and newer, AEAD ciphers only). Without tls_cert and
    # tls_key, a self-signed pair is generated under api.self_signed_dir on first start
    # (senders to an MX do not verify certificates; configure a real one all the same).
    starttls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A load balancer in front passes the real client on (PROXY protocol v1 or v2); a
    # connection without the header within the timeout is closed. Off by default.
    proxy_protocol: bool = False
    proxy_protocol_timeout: float = Field(default=5.0, gt=0)
    # SO_REUSEPORT on every SMTP listener, so that several ingress processes of one host share
    # its ports and the kernel spreads the connections among them (``python -m services
    # --ingress N`` sets it for its own). Off by default: with it, any process of the same user
    # may bind the port too.
    reuse_port: bool = False

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _valid_networks(value)

    def trusts(self, address: str) -> bool:
        """Whether the client ``address`` is in one of ``trusted_networks``."""
        import ipaddress

        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(
            ip in ipaddress.ip_network(network, strict=False) for network in self.trusted_networks
        )


def _valid_networks(value: list[str]) -> list[str]:
    import ipaddress

    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"not a network (CIDR): {network!r}") from None
    return value


class SubmissionSettings(BaseModel):
    """Authenticated submission (docs/ingress.md): users who log in (SMTP AUTH PLAIN or LOGIN,
    over TLS only) may send to any domain. Both listeners are off unless set."""

    # host:port of the submission listener (port 587: STARTTLS required before AUTH and MAIL).
    listen: str | None = None
    # host:port of the implicit-TLS submission listener (port 465, RFC 8314).
    listen_tls: str | None = None
    # User name -> argon2 hash (make one with ``python -m services.ingress hash-password``).
    # More users are kept in the database through the API (/v1/submission-users).
    users: dict[str, str] = {}
    # Failed logins from one client IP within auth_failure_window seconds before further AUTH
    # is refused with 421 4.7.0 and the connection closed; each failure is answered only
    # after auth_failure_delay seconds.
    max_auth_failures: int = Field(default=5, ge=1)
    auth_failure_window: float = Field(default=600.0, gt=0)
    auth_failure_delay: float = Field(default=1.0, ge=0)

    @field_validator("listen", "listen_tls")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("users")
    @classmethod
    def _argon2_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, hashed in value.items():
            if not hashed.startswith("$argon2"):
                raise ValueError(
                    f"submission.users.{name}: not an argon2 hash "
                    "(python -m services.ingress hash-password makes one)"
                )
        return value


class ApiSettings(BaseModel):
    listen: str = "127.0.0.1:8443"
    tls_cert: Path | None = None  # default: a self-signed certificate under var/tls/
    tls_key: Path | None = None
    self_signed_dir: Path = Path("var/tls")  # where the generated certificate is kept
    # A request body larger than this is refused with 413 before it is read into memory.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Seconds /metrics keeps its count of messages per status before it asks the database again.
    metrics_cache_seconds: float = Field(default=15.0, ge=0)
    # The address people reach the API at (the base of the links in digests), e.g.
    # https://quarantine.example.com; None: https://<listen>.
    public_url: str | None = None
    # The HMAC key that signs one-click links, web sessions and CSRF tokens (at least 32
    # characters; set MOAT_API__SIGNING_KEY, never commit it). Outside env dev the API refuses
    # to start without one; in dev one is generated into signing_key_file.
    signing_key: SecretStr | None = None
    signing_key_file: Path = Path("var/api-signing-key")
    # Seconds a web page sign-in lasts.
    session_ttl: float = Field(default=12 * 3600.0, gt=0)

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("api.signing_key needs at least 32 characters (openssl rand -hex 32)")
        return value

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host, port = split_host_port(self.listen)
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class DigestSettings(BaseModel):
    """Quarantine digests (services/api/digests.py, run by the API service)."""

    # Seconds between two digests; runs happen when the clock passes a multiple of it (plus
    # offset) since 1970-01-01 UTC, so a restart neither adds nor shifts one. 0: no periodic
    # digest (POST /v1/digests/send still sends one).
    interval: float = Field(default=24 * 3600.0, ge=0)
    offset: float = Field(default=0.0, ge=0)  # e.g. 25200: daily at 07:00 UTC
    # Seconds a one-click link (release, delete, block, sign in) in a digest stays valid.
    link_ttl: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Entries listed in one digest; the rest are counted, and the sign-in link shows them.
    max_entries: int = Field(default=50, ge=1)
    # Recipients handled per transaction.
    batch_size: int = Field(default=100, ge=1)


class WebhookSettings(BaseModel):
    """Webhooks (services/api/webhooks.py, dispatched by the API service)."""

    poll_interval: float = Field(default=2.0, gt=0)  # seconds between looks for new events
    timeout: float = Field(default=10.0, gt=0)  # seconds one POST may take
    # Seconds before each retry of a failed POST; after the last one the event is 'failed'.
    retry_schedule: list[float] = [10, 60, 300, 1800, 7200, 21600]
    # Delivered and failed events are kept this many seconds (GET .../deliveries shows them).
    keep: float = Field(default=7 * 24 * 3600.0, gt=0)
    # A CA bundle for receivers with certificates of a private CA; None: the system's.
    ca_file: Path | None = None

    @field_validator("retry_schedule")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("webhooks.retry_schedule: every delay must be positive (seconds)")
        return value


class BrokerSettings(BaseModel):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    publish_timeout: float = 10.0
    # Quorum queues count deliveries; past this many the message is dead-lettered (failed).
    delivery_limit: int = 5
    # Seconds a worker that finished its work (verdict or attempt recorded) waits for a lost
    # broker connection to come back to publish the next step, before it gives up and leaves
    # it to the recovery sweeps.
    handoff_timeout: float = 60.0


class DnsSettings(BaseModel):
    """The resolver the checks use (SPF, DKIM, DMARC, blocklists)."""

    nameservers: list[str] = []  # empty: the system's (/etc/resolv.conf)
    port: int = 53
    timeout: float = 2.0  # seconds per lookup; a blocklist that is slow is skipped
    # Answers cached (dnspython's LRU cache), each for its own TTL; the least recently used
    # go first past this many.
    cache_size: int = Field(default=10_000, ge=1)


# --- scanner engines: each engine's settings in its own section of ``scanner`` ----------------


class ClamAVSettings(BaseModel):
    """ClamAV: the raw message and each attachment streamed to clamd (INSTREAM)."""

    # Off by default: with clamd missing, an enabled check would hold all mail (fail_closed).
    enabled: bool = False
    # clamd's LocalSocket (Debian's clamav-daemon); used unless ``tcp`` is set.
    socket: Path = Path("/var/run/clamav/clamd.ctl")
    # host:port of clamd's TCPSocket; when set it is used instead of ``socket``.
    tcp: str | None = None
    # Seconds to connect to clamd.
    connect_timeout: float = Field(default=2.0, gt=0)
    # Seconds for one scan (stream one part and read clamd's answer); keep under check_timeout.
    scan_timeout: float = Field(default=15.0, gt=0)
    # Scans in flight to clamd from one scanner process (keep under clamd's MaxThreads).
    max_connections: int = Field(default=4, ge=1)
    # clamd's StreamMaxLength (Debian: 25M); bigger parts are not sent: CLAMAV_TOO_BIG (info).
    max_stream_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    # clamd down or slow: true = the check fails and the message waits for a retry; false =
    # an info finding CLAMAV_UNAVAILABLE and the mail goes on UNSCANNED for viruses.
    fail_closed: bool = True

    @field_validator("tcp")
    @classmethod
    def _valid_tcp(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value


class AttachmentSettings(BaseModel):
    """Attachment, archive and MIME-structure policy (docs/checks/attachments.md)."""

    # Classes of TRUE content type (magic bytes, whatever the name says) that are blocked.
    blocked_types: list[Literal["executable", "script", "macro", "disk_image"]] = [
        "executable",
        "script",
        "macro",
        "disk_image",
    ]
    # File-name extensions blocked whatever the content (lower case, without the dot).
    blocked_extensions: list[str] = [
        *("exe", "dll", "com", "scr", "pif", "cpl", "msi", "msp", "msc", "jar", "gadget"),
        *("js", "jse", "vbs", "vbe", "wsf", "wsh", "wsc", "hta", "ps1", "psm1", "bat", "cmd"),
        *("lnk", "reg", "inf", "scf", "chm", "application", "appref-ms", "url", "library-ms"),
        *("iso", "img", "vhd", "vhdx", "dmg"),
        *("docm", "dotm", "xlsm", "xltm", "xlam", "pptm", "potm", "ppsm", "ppam", "sldm"),
    ]
    # Report a name claiming an inert type (pdf, jpg, docx...) over dangerous or archive content.
    type_mismatch: bool = True
    # Archive levels opened one inside another (a .tar.gz is two); deeper: ARCHIVE_LIMIT.
    max_depth: int = Field(default=6, ge=1)
    # Archive members looked at per message; one archive declaring more is an ARCHIVE_BOMB.
    max_entries: int = Field(default=1000, ge=1)
    # Bytes decompressed per message at most; more (declared or real): ARCHIVE_LIMIT.
    max_total_uncompressed: int = Field(default=100 * 1024 * 1024, ge=1)
    # Uncompressed/compressed ratio over which a large member or archive is an ARCHIVE_BOMB.
    max_ratio: float = Field(default=100.0, gt=1)
    # The ratio rule applies from this many uncompressed bytes (small files compress well).
    bomb_min_size: int = Field(default=1024 * 1024, ge=0)
    # An encrypted archive, member or Office file: "policy" (quarantine) or "info" (allow).
    encrypted_archive_action: Literal["policy", "info"] = "policy"
    # An archive recognised but not opened (cab, ace, arj, lzh, zstd; a rar whose compressed
    # members cannot be extracted: no unar installed, or split over volumes).
    opaque_archive_action: Literal["policy", "info"] = "info"
    # An archive that cannot be read (truncated, malformed, unsupported compression method).
    corrupt_archive_action: Literal["policy", "info"] = "policy"
    # A PDF with JavaScript or a launch action (ATTACHMENT_PDF_ACTIVE): "policy" or "info".
    pdf_active_action: Literal["policy", "info"] = "policy"
    # MIME nesting depth (multiparts and attached messages); deeper: MIME_UNSCANNABLE, and
    # the parse stops there. At most 100 (Postfix's mime_nesting_limit): email's parser goes
    # one frame deeper per level, and Python's recursion limit is 1,000 frames.
    max_mime_depth: int = Field(default=20, ge=1, le=100)
    # MIME parts per message, containers included; more: MIME_UNSCANNABLE.
    max_mime_parts: int = Field(default=500, ge=1)
    # Bytes of headers over all parts of a message; more: MIME_UNSCANNABLE.
    max_header_bytes: int = Field(default=512 * 1024, ge=1)


class ClassifierSettings(BaseModel):
    """The statistical spam classifier (docs/checks/classifier.md). The model, the polling and
    the learning keys are read from the global section; domains may override the rest."""

    enabled: bool = True  # false: the check reports nothing for this domain's mail
    model_path: Path | None = None  # None: the model shipped in services/scanner/classifier/model/
    poll_interval: float = 30.0  # seconds between looks for learned feedback; 0: never look
    # Seconds between looks for new feedback rows to learn (one indexed query per replica);
    # what one replica learns reaches the others at once through feedback.learned.
    feedback_interval: float = Field(default=2.0, gt=0)
    # The evaluation's "spam at or above" (services/scanner/classifier/evaluation.py); the
    # verdict scores the probability by band (BAYES_00..BAYES_999 in moat/symbols.py).
    spam_probability: float = Field(default=0.9, gt=0.0, le=1.0)
    max_text_bytes: int = 200_000  # text of a message tokenised at most (the rest is ignored)
    learn_rate: float = 2.0  # logit units a learning step moves the message by (times its error)
    learn_max_steps: int = 8  # steps at most per learned message...
    learn_margin: float = 3.0  # ...until its logit is this far on the right side of 0


class AuthSettings(BaseModel):
    """SPF, DKIM, DMARC and ARC: sender authentication (docs/checks/auth.md). The scores of
    their symbols are in the symbol table (moat/symbols.py, ``scanner.symbols``)."""

    enabled: bool = True  # false: no lookups and no findings for this (domain's) mail
    spf: bool = True  # SPF: the client IP against the envelope sender's domain (HELO if null)
    dkim: bool = True  # verify the DKIM signatures
    dmarc: bool = True  # the From domain's DMARC policy, from the SPF and DKIM results
    spf_timeout: float = Field(10.0, gt=0)  # seconds for one SPF evaluation; then temperror
    max_signatures: int = Field(8, ge=0)  # DKIM signatures verified, topmost first; rest ignored
    min_key_bits: int = Field(1024, ge=512)  # a shorter RSA key makes a signature permerror
    # DMARC_REJECT (failed under p=reject): "policy" forces the policy verdict (quarantine);
    # "spam" makes it a plain score (the table's DMARC_REJECT score).
    dmarc_reject: Literal["policy", "spam"] = "policy"
    # ARC (RFC 8617): sealers (the d= of ARC-Seal, e.g. google.com, a mailing list's domain)
    # whose valid chain saying the mail authenticated at their hop is believed when DMARC
    # fails here (forwarding, lists): no DMARC_REJECT/QUARANTINE/FAIL then. Empty: none.
    arc: bool = True  # verify ARC chains
    arc_trusted_sealers: list[str] = []


class BlocklistZone(BaseModel):
    """One DNS blocklist (DNSBL for client IPs, URI blocklist for link domains)."""

    zone: str  # the list's DNS zone, e.g. zen.spamhaus.org
    symbol: str = ""  # the finding's symbol; empty: RBL_/URIBL_ and the zone (RBL_ZEN_SPAMHAUS_ORG)
    weight: float = 3.0  # score of a listing whose answer is not in ``codes``
    codes: dict[str, float] = {}  # answer (e.g. 127.0.0.4) → score; 0 ignores that answer
    bitmask: bool = False  # ``codes`` are bits of the answer's last octet (SURBL multi)

    @field_validator("zone")
    @classmethod
    def _bare_zone(cls, value: str) -> str:
        zone = value.strip().lower().strip(".")
        if not zone or " " in zone:
            raise ValueError(f"not a DNS zone: {value!r}")
        return zone

    @field_validator("codes")
    @classmethod
    def _loopback_codes(cls, value: dict[str, float]) -> dict[str, float]:
        import ipaddress  # only here: the rest of the settings need no address parsing

        for code in value:
            try:
                address = ipaddress.IPv4Address(code.strip())
            except ValueError:
                raise ValueError(f"blocklist code {code!r} is not an IPv4 address") from None
            if not address.is_loopback:
                raise ValueError(f"blocklist code {code!r} is not in 127.0.0.0/8")
        return {code.strip(): weight for code, weight in value.items()}


class RulesSettings(BaseModel):
    """Header heuristics, DNS blocklists and their weights (services/scanner/checks/headers.py,
    reputation.py; docs/checks/rules.md)."""

    # A Date this many hours after the message's arrival is "in the future".
    date_future_hours: float = Field(default=6.0, gt=0, le=24 * 365)
    # A Date this many days before the message's arrival is "in the past".
    date_past_days: float = Field(default=14.0, gt=0, le=3650)
    # Hidden HTML text counts once it has this many non-blank characters...
    hidden_text_min_chars: int = Field(default=20, ge=1)
    # ...and is at least this share of the HTML's text.
    hidden_text_min_ratio: float = Field(default=0.05, ge=0, le=1)
    # CSS font sizes at or below this many pixels are unreadable (hidden).
    tiny_font_px: float = Field(default=3.0, ge=0)
    # Text and background colours whose channels all differ by at most this are "the same".
    same_colour_distance: int = Field(default=24, ge=0, le=255)
    # Hosts of URL shorteners (a host or any subdomain of it).
    url_shorteners: list[str] = [
        "bit.ly",
        "bitly.com",
        "tinyurl.com",
        "t.co",
        "goo.gl",
        "ow.ly",
        "is.gd",
        "buff.ly",
        "rebrand.ly",
        "cutt.ly",
        "shorturl.at",
        "tiny.cc",
        "v.gd",
        "t.ly",
        "rb.gy",
        "s.id",
        "lnkd.in",
        "bl.ink",
        "short.io",
        "clck.ru",
        "qr.ae",
        "x.co",
        "shorte.st",
        "adf.ly",
    ]
    # Lookalikes: registrable labels (``moat`` of moat.test) shorter than this are compared by
    # their confusable skeleton only, never by edit distance.
    lookalike_min_length: int = Field(default=4, ge=1)
    # Edit distance (insertions, deletions, substitutions, swaps) that makes a lookalike...
    lookalike_distance: int = Field(default=1, ge=0, le=3)
    # ...and the larger distance allowed for labels at least ``lookalike_long_length`` long.
    lookalike_long_distance: int = Field(default=2, ge=0, le=3)
    # Protected labels at least this long allow ``lookalike_long_distance``.
    lookalike_long_length: int = Field(default=9, ge=1)
    # Combosquatting: protected labels shorter than this are never looked for among other words
    # (``ab`` of ab.test would be in every other name); the whole protected domain inside
    # another one (login.example.test.evil.test) is looked for at any length.
    combosquat_min_length: int = Field(default=5, ge=1)
    # Protected labels at least this long count glued to other letters (examplesupport.test);
    # shorter ones only as whole hyphen-separated words (so mail.test is no part of gmail.test).
    combosquat_glued_length: int = Field(default=7, ge=1)
    # Domains (and their subdomains) never reported as lookalikes, homographs or combosquats of
    # the protected ones: your own other domains (example-mail.test for example.test).
    lookalike_allow: list[str] = []
    # At most this many links of a message are examined (shorteners, IPs, lookalikes).
    max_urls: int = Field(default=500, ge=0)
    # DNS blocklists asked about the connecting client's IP; none by default (public lists
    # need registration): see docs/checks/rules.md.
    dnsbl_zones: list[BlocklistZone] = []
    # URI blocklists asked about the registrable domains of body links; none by default.
    uribl_zones: list[BlocklistZone] = []
    # At most this many distinct link domains are looked up per message.
    max_uri_domains: int = Field(default=20, ge=0, le=100)
    # Seconds one blocklist lookup may take before it is skipped (DNSBL_TEMPFAIL).
    dns_timeout: float = Field(default=1.5, gt=0)

    @field_validator("lookalike_allow")
    @classmethod
    def _allowed_domains(cls, value: list[str]) -> list[str]:
        domains = [domain.strip().strip(".").lower() for domain in value]
        if not all(domains):
            raise ValueError("an empty domain in lookalike_allow")
        return domains


class SenderListSettings(BaseModel):
    """Allow and block lists of senders, kept through the API (``/v1/senders``) and applied by
    the scanner and, with ``block_action: reject``, by ingress at RCPT
    (docs/checks/sender_lists.md).
    ``poll_interval`` is read from the global section; domains may override the rest."""

    enabled: bool = True  # false: no SENDER_* findings and no refusals for this (domain's) mail
    # A blocked sender's mail: held in quarantine (policy verdict), or refused at RCPT with
    # 550 5.7.1 by ingress (and held by the scanner should a rule be newer than the RCPT).
    block_action: Literal["quarantine", "reject"] = "quarantine"
    # Seconds between two reads of the rules by each scanner and ingress process.
    poll_interval: float = Field(default=10.0, gt=0)


class SymbolOverride(BaseModel):
    """``scanner.symbols.<NAME>`` as a mapping: a new score, a new forced action, or both.
    ``action: none`` takes a forced action away (the symbol only scores); unset keeps it."""

    model_config = ConfigDict(extra="forbid")
    score: float | None = None
    action: Literal["virus", "policy", "spam", "allow", "none"] | None = None


class ScannerSettings(BaseModel):
    prefetch: int = 16
    # The HTTP port of /healthz, /readyz and /metrics (moat/probes.py), on metrics_host; 0: off.
    # `python -m services` gives scanner-1 this port, the others the ports after the highest
    # of the three services' (docs/observability.md).
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    check_timeout: float = 20.0
    spam_threshold: float = 5.0
    # What happens to mail of each verdict; a virus is quarantined whatever its score.
    actions: dict[Literal["clean", "spam", "virus", "policy"], Literal["deliver", "quarantine"]] = {
        "clean": "deliver",
        "spam": "quarantine",
        "virus": "quarantine",
        "policy": "quarantine",
    }
    clamav: ClamAVSettings = ClamAVSettings()
    attachments: AttachmentSettings = AttachmentSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    auth: AuthSettings = AuthSettings()
    rules: RulesSettings = RulesSettings()
    sender_lists: SenderListSettings = SenderListSettings()
    # Overrides of the symbol table (moat/symbols.py, docs/symbols.md): NAME: score, or
    # NAME: {score: .., action: virus|policy|spam|allow|none}. An unknown NAME fails start-up.
    symbols: dict[str, float | SymbolOverride] = {}
    _table: SymbolTable | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _known_symbols(self) -> ScannerSettings:
        from moat.symbols import SymbolTable

        self._table = SymbolTable.for_policy(self)  # raises on an unknown symbol
        return self

    @property
    def symbol_table(self) -> SymbolTable:
        """The symbol table in force under this policy (built once, at validation)."""
        if self._table is None:
            from moat.symbols import SymbolTable

            self._table = SymbolTable.for_policy(self)
        return self._table


class DeliverySettings(BaseModel):
    prefetch: int = 32
    # The HTTP port of /healthz, /readyz and /metrics (moat/probes.py), on metrics_host; 0: off.
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    # Seconds to wait before each retry; the last value repeats until the lifetime runs out.
    # Postfix-like: 5 minutes doubling to about an hour, for up to 5 days.
    retry_schedule: list[int] = [300, 600, 1200, 2400, 3600]
    retry_jitter: float = 0.1
    max_lifetime: int = 5 * 24 * 3600
    smarthost: str | None = None  # host:port for mail to domains we don't protect (bounces)
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    # A worker holds a message it is delivering with a lease of this many seconds, renewed every
    # third of it while it works; a lease that runs out means the worker died, and the sweep
    # hands the message to another one.
    lease_seconds: int = 120
    # How often the recovery sweep looks for mail whose next step was lost (crash, lost publish).
    sweep_interval: float = 60.0
    sweep_grace: float = 300.0

    @field_validator("retry_schedule")
    @classmethod
    def _non_empty_positive(cls, value: list[int]) -> list[int]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("retry_schedule needs at least one positive delay (seconds)")
        return value


DAY = 24 * 3600.0


class RetentionSettings(BaseModel):
    """How long Moat keeps what (moat/retention.py, run by the delivery service)."""

    interval: float = Field(default=3600.0, gt=0)  # seconds between two passes
    # Quarantined (and failed) mail older than this is purged: its raw copy removed, the
    # record kept as 'purged'.
    quarantine: float = Field(default=30 * DAY, gt=0)
    # Records of finished mail (delivered, bounced, rejected, deleted, purged) older than this
    # are removed from the database, timeline included.
    records: float = Field(default=30 * DAY, gt=0)
    # The raw copy of delivered or bounced mail is removed when it is done (0), or kept this
    # many seconds (to download it or report it as spam afterwards) and removed by a pass.
    delivered_copy: float = Field(default=0.0, ge=0)
    # Rows or files handled per transaction: a pass never holds the database for long.
    batch_size: int = Field(default=500, ge=1)
    # A spool file with no record is removed once it is this old (a crash between spooling
    # and recording left it); temporary files of interrupted writes too.
    orphan_grace: float = Field(default=3600.0, gt=0)


class S3Settings(BaseModel):
    """An S3-compatible bucket for the message store (``moat/s3store.py``)."""

    bucket: str = ""
    prefix: str = "spool/"  # every key starts with it: one bucket can serve several uses
    endpoint_url: str | None = None  # None: AWS; else e.g. http://seaweedfs:8333
    region: str = "us-east-1"
    # path: http://host/bucket/key, what most self-hosted stores need; virtual: bucket.host.
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    # Empty: boto3's own chain (AWS_* variables, web identity on Kubernetes, instance role).
    # Give the secret through the environment (MOAT_STORE__S3__SECRET_ACCESS_KEY), not a file.
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    create_bucket: bool = False  # create it at start-up if missing (compose, tests)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    max_pool_connections: int = Field(default=32, ge=1)


class StoreSettings(BaseModel):
    """Where raw messages are kept (``moat/spool.py``): ``local``, the directory ``spool_dir``
    (one host, or a shared volume), or ``s3``, a bucket (pods that share no disk)."""

    backend: Literal["local", "s3"] = "local"
    s3: S3Settings = S3Settings()


class LimitsSettings(BaseModel):
    """Per client IP session limits (docs/ingress-limits.md); Postfix's names and defaults.
    0 turns a limit off. Trusted networks are exempt."""

    # Counters shared by the ingress replicas; None: each process counts on its own.
    redis_url: str | None = None
    redis_prefix: str = "moat:"
    redis_retry: float = Field(default=30.0, gt=0)  # after an outage, try Redis again after
    redis_timeout: float = Field(default=0.5, gt=0)  # a slower answer counts as an outage
    connections: int = Field(default=50, ge=0)  # smtpd_client_connection_count_limit
    messages_per_minute: int = Field(default=0, ge=0)  # smtpd_client_message_rate_limit
    recipients_per_minute: int = Field(default=0, ge=0)  # smtpd_client_recipient_rate_limit
    rate_window: float = Field(default=60.0, gt=0)  # anvil_rate_time_unit
    soft_error_limit: int = Field(default=10, ge=0)  # smtpd_soft_error_limit
    hard_error_limit: int = Field(default=20, ge=0)  # smtpd_hard_error_limit
    error_sleep: float = Field(default=1.0, ge=0)  # smtpd_error_sleep_time
    # Pre-greeting pause (postscreen_greet_wait): a client that talks in it is refused. A
    # client that waited is not paused again for greet_pass_ttl (postscreen_greet_ttl).
    greet_pause: float = Field(default=1.0, ge=0)
    greet_pass_ttl: float = Field(default=86400.0, ge=0)
    # A connection's entry in the shared count expires after this, should its replica die.
    connection_ttl: float = Field(default=3600.0, gt=0)


class GreylistSettings(BaseModel):
    """Greylisting at RCPT (postgrey's defaults); off unless enabled here or per domain."""

    enabled: bool = False
    delay: float = Field(default=300.0, ge=0)  # a retry before this is refused again
    retry_window: float = Field(default=2 * 86400.0, gt=0)  # a first attempt is forgotten after
    memory: float = Field(default=36 * 86400.0, gt=0)  # a client that passed skips it this long
    ipv6_prefix: int = Field(default=64, ge=0, le=128)  # an IPv6 client's network


class IngressSettings(BaseModel):
    # Messages stored but whose publish was never recorded as confirmed are republished.
    sweep_interval: float = 60.0
    sweep_grace: float = 120.0
    # The HTTP port of /healthz, /readyz and /metrics (moat/probes.py), on metrics_host; 0: off.
    metrics_port: int = Field(default=9103, ge=0, le=65535)


class SupervisorSettings(BaseModel):
    # ``python -m services`` starts the scanners and delivery this much nicer (setpriority(2))
    # than ingress and the api: ingress waits on every message while a sender waits for its 250,
    # scanning and delivery are throughput work behind a queue, so on a busy CPU the scheduler
    # should run ingress first. 0: every child at the supervisor's own priority. Measured in
    # docs/performance.md ("Time to 250").
    background_nice: int = Field(default=0, ge=0, le=19)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOAT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    env: Literal["dev", "test", "prod"] = "dev"
    log_level: str = "INFO"
    # console (for people) or json (one object per line; docs/observability.md).
    log_format: Literal["console", "json"] = "console"
    # Where ingress, scanner and delivery serve /healthz, /readyz and /metrics (their
    # metrics_port): loopback unless a scraper elsewhere needs them (0.0.0.0 in a pod).
    metrics_host: str = "127.0.0.1"
    domains: dict[str, DomainSettings] = {}
    database_url: str = "sqlite+aiosqlite:///var/moat.db"
    spool_dir: Path = Path("var/spool")
    store: StoreSettings = StoreSettings()
    # Ingress refuses MAIL (452 4.3.1) while the spool's file system has less free space than
    # this; None: 1.5 times smtp.max_message_size (Postfix's queue_minfree rule).
    spool_min_free: int | None = Field(default=None, ge=0)
    admin_token: SecretStr = SecretStr(PLACEHOLDER_TOKEN)
    # Seconds a service has to finish the work in hand once told to stop (SIGTERM); what is not
    # finished by then is handed back. ``python -m services`` kills a child that has not exited
    # STOP_MARGIN seconds after that.
    shutdown_timeout: float = Field(default=20.0, gt=0)
    smtp: SmtpSettings = SmtpSettings()
    submission: SubmissionSettings = SubmissionSettings()
    api: ApiSettings = ApiSettings()
    broker: BrokerSettings = BrokerSettings()
    ingress: IngressSettings = IngressSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    limits: LimitsSettings = LimitsSettings()
    greylist: GreylistSettings = GreylistSettings()
    scanner: ScannerSettings = ScannerSettings()
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    dns: DnsSettings = DnsSettings()
    digest: DigestSettings = DigestSettings()
    webhooks: WebhookSettings = WebhookSettings()
    callout: CalloutSettings = CalloutSettings()
    _policies: dict[str, ScannerSettings] = PrivateAttr(default_factory=dict)

    @field_validator("domains")
    @classmethod
    def _lowercase_domains(cls, value: dict[str, DomainSettings]) -> dict[str, DomainSettings]:
        return {name.lower().rstrip("."): domain for name, domain in value.items()}

    @model_validator(mode="after")
    def _recipients_in_their_domain(self) -> Settings:
        """A ``recipients`` entry of another domain could never match: a typo to catch early."""
        for name, domain in self.domains.items():
            for entry in domain.recipients or []:
                if entry.rpartition("@")[2].lower().rstrip(".") != name:
                    raise ValueError(f"domains.{name}.recipients: {entry!r} is not in {name}")
        return self

    @model_validator(mode="after")
    def _domain_policies(self) -> Settings:
        """Build each domain's scanner policy once, so a bad override fails at start-up."""
        base = self.scanner.model_dump()
        self._policies = {
            name: ScannerSettings.model_validate(_deep_merge(base, domain.scanner))
            for name, domain in self.domains.items()
            if domain.scanner
        }
        return self

    @model_validator(mode="after")
    def _no_placeholder_secret_outside_dev(self) -> Settings:
        if self.env != "dev" and self.admin_token.get_secret_value() in ("", PLACEHOLDER_TOKEN):
            raise ValueError(
                f"admin_token is the placeholder {PLACEHOLDER_TOKEN!r}; set MOAT_ADMIN_TOKEN "
                f"to a secret of your own (env={self.env})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get("MOAT_CONFIG")
        if config_path:
            if not Path(config_path).is_file():
                raise FileNotFoundError(f"MOAT_CONFIG points to {config_path!r}, which is no file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_path))
        return tuple(sources)

    @property
    def spool_free_minimum(self) -> int:
        if self.spool_min_free is not None:
            return self.spool_min_free
        return self.smtp.max_message_size * 3 // 2

    def greylists(self, domain: str) -> bool:
        """Whether mail to ``domain`` is greylisted."""
        settings = self.relay_for(domain)
        if settings is None or settings.greylist is None:
            return self.greylist.enabled
        return settings.greylist

    def relay_for(self, domain: str) -> DomainSettings | None:
        return self.domains.get(domain.lower().rstrip("."))

    def scanner_policy(self, domain: str | None) -> ScannerSettings:
        """The scanner policy for mail to ``domain``: the global one unless it overrides."""
        if domain is None:
            return self.scanner
        return self._policies.get(domain.lower().rstrip("."), self.scanner)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once, in a service's ``main``; pass the object on from there."""
    return Settings(**overrides)
