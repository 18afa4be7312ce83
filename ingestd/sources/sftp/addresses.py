"""IP allow-lists (CIDRs), shared by tenants' `allow_ips` and the defender's safe list."""

from __future__ import annotations

import ipaddress


def ip_allowed(ip: str, allow: list[str]) -> bool:
    """True when no allow-list is set, or `ip` is in one of its CIDRs."""
    if not allow:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in allow)
