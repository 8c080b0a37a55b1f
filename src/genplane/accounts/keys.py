"""API key material: format, hashing, and what may be shown of a key.

A key is ``bye_<region>_<43 base62 chars>``: the region is readable without any
look-up (a deployment answers another region's key with that region's host), and
~256 bits of randomness make a plain SHA-256 a safe at-rest form (no salt or slow
hash is needed for high-entropy secrets; a slow hash would only cost every request).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import string

from genplane.settings import REGIONS

KEY_PREFIX = "bye_"
VISIBLE_CHARS = 9
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(r"^bye_(?P<region>[a-z]{2})_(?P<secret>[A-Za-z0-9]{43})$")


def new_key(region: str) -> str:
    return f"{KEY_PREFIX}{region}_" + "".join(secrets.choice(_ALPHABET) for _ in range(43))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_region(key: str) -> str | None:
    """The region a well-formed key belongs to, or None when the key is not ours at all."""
    match = _KEY_RE.match(key)
    if not match or match["region"] not in REGIONS:
        return None
    return match["region"]


def visible_prefix(key: str) -> str:
    """The only part of a key that may appear in logs, records or output."""
    return key[:VISIBLE_CHARS]


def normalise_allowlist(entries: list[str]) -> list[str]:
    """Validate IP addresses and CIDRs (at most 50), returned in canonical form."""
    if len(entries) > 50:
        raise ValueError("an IP allowlist holds at most 50 entries")
    out: list[str] = []
    for entry in entries:
        try:
            out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR: {entry!r}") from exc
    return out


def ip_allowed(ip: str | None, allowlist: list[str]) -> bool:
    if not allowlist:
        return True
    if ip is None:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(net) for net in allowlist)
