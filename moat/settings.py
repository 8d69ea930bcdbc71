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
from typing import Any, Literal

from pydantic import (
    BaseModel,
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

PLACEHOLDER_TOKEN = "change-me"


def split_host_port(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return value.strip("[]"), default_port
    return host.strip("[]"), int(port)


class DomainSettings(BaseModel):
    """A domain we protect: we accept its mail and relay it to its own mail server."""

    relay: str = Field(description="host:port of the organisation's mail server for this domain")
    # Overrides of the global ``scanner`` section for mail to this domain, same keys and shape
    # (e.g. ``{spam_threshold: 8}``); merged over the global values at start-up.
    scanner: dict[str, Any] = {}

    @field_validator("relay")
    @classmethod
    def _valid_relay(cls, value: str) -> str:
        split_host_port(value)
        return value


class SmtpSettings(BaseModel):
    listen: str = "127.0.0.1:2525"
    hostname: str = Field(default_factory=socket.getfqdn)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_received_headers: int = 50
    idle_timeout: float = 300.0


class ApiSettings(BaseModel):
    listen: str = "127.0.0.1:8443"
    tls_cert: Path | None = None  # default: a self-signed certificate under var/tls/
    tls_key: Path | None = None
    self_signed_dir: Path = Path("var/tls")  # where the generated certificate is kept


class BrokerSettings(BaseModel):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    publish_timeout: float = 10.0
    # Quorum queues count deliveries; past this many the message is dead-lettered (failed).
    delivery_limit: int = 5


class DnsSettings(BaseModel):
    """The resolver the checks use (SPF, DKIM, DMARC, blocklists)."""

    nameservers: list[str] = []  # empty: the system's (/etc/resolv.conf)
    port: int = 53
    timeout: float = 2.0  # seconds per lookup; a blocklist that is slow is skipped
    cache_seconds: float = 300.0
    cache_size: int = 10_000


# --- scanner engines: each engine's settings in its own section of ``scanner`` ----------------


class ClamAVSettings(BaseModel):
    """ClamAV (clamd) — filled in by the ClamAV check."""


class AttachmentSettings(BaseModel):
    """Attachment, archive and MIME-structure policy — filled in by the attachments check."""


class ClassifierSettings(BaseModel):
    """The statistical spam classifier — filled in by the classifier."""


class AuthSettings(BaseModel):
    """SPF, DKIM and DMARC — filled in by the sender-authentication check."""


class RulesSettings(BaseModel):
    """Header heuristics, DNS blocklists and their weights — filled in by the rules checks."""


class ScannerSettings(BaseModel):
    prefetch: int = 16
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


class DeliverySettings(BaseModel):
    prefetch: int = 32
    # Seconds to wait before each retry; the last value repeats until the lifetime runs out.
    # Postfix-like: 5 minutes doubling to about an hour, for up to 5 days.
    retry_schedule: list[int] = [300, 600, 1200, 2400, 3600]
    retry_jitter: float = 0.1
    max_lifetime: int = 5 * 24 * 3600
    smarthost: str | None = None  # host:port for mail to domains we don't protect (bounces)
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    # A worker holds a message this long while delivering it; after that the sweep may retake it.
    lease_seconds: int = 900
    # How often the recovery sweep looks for mail whose next step was lost (crash, lost publish).
    sweep_interval: float = 60.0
    sweep_grace: float = 300.0

    @field_validator("retry_schedule")
    @classmethod
    def _non_empty_positive(cls, value: list[int]) -> list[int]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("retry_schedule needs at least one positive delay (seconds)")
        return value


class IngressSettings(BaseModel):
    # Messages stored but whose publish was never recorded as confirmed are republished.
    sweep_interval: float = 60.0
    sweep_grace: float = 120.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOAT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    env: Literal["dev", "test", "prod"] = "dev"
    log_level: str = "INFO"
    domains: dict[str, DomainSettings] = {}
    database_url: str = "sqlite+aiosqlite:///var/moat.db"
    spool_dir: Path = Path("var/spool")
    admin_token: SecretStr = SecretStr(PLACEHOLDER_TOKEN)
    smtp: SmtpSettings = SmtpSettings()
    api: ApiSettings = ApiSettings()
    broker: BrokerSettings = BrokerSettings()
    ingress: IngressSettings = IngressSettings()
    scanner: ScannerSettings = ScannerSettings()
    delivery: DeliverySettings = DeliverySettings()
    dns: DnsSettings = DnsSettings()
    _policies: dict[str, ScannerSettings] = PrivateAttr(default_factory=dict)

    @field_validator("domains")
    @classmethod
    def _lowercase_domains(cls, value: dict[str, DomainSettings]) -> dict[str, DomainSettings]:
        return {name.lower().rstrip("."): domain for name, domain in value.items()}

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
