"""Where mail for a recipient domain goes: the protected domain's own mail server, else the
smarthost (bounces to outside senders), else nowhere yet (MX routing comes later)."""

from __future__ import annotations

from dataclasses import dataclass

from moat.settings import Settings, split_host_port


@dataclass(frozen=True)
class Route:
    host: str
    port: int
    via: str  # "relay" (a protected domain's server) or "smarthost"


def resolve_route(domain: str, settings: Settings) -> Route | None:
    protected = settings.relay_for(domain)
    if protected is not None:
        host, port = split_host_port(protected.relay, default_port=25)
        return Route(host, port, "relay")
    if settings.delivery.smarthost:
        host, port = split_host_port(settings.delivery.smarthost, default_port=25)
        return Route(host, port, "smarthost")
    return None


NO_ROUTE_REPLY = (
    "4.4.0 no route to {domain}: it is not a protected domain and no smarthost is configured "
    "(set delivery.smarthost)"
)
