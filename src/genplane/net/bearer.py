"""The one reading of an ``Authorization`` header as a bearer token.

Authentication, the firewall and the anomaly blocker must agree on which token a
request carries: a block keyed on one reading and a check keyed on another would let a
blocked key through with a differently spaced header.
"""

from __future__ import annotations


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>``, or None when the header is not exactly that.

    The scheme is case-insensitive (RFC 9110 §11.1) and is separated from the token by
    spaces (one or more, as the RFC allows); blanks around the value are ignored. A
    missing token, another scheme, or a second word after the token gives None. The
    token's characters are not checked here: what a key looks like is the key
    format's business, and an unknown shape is an invalid key, not a missing one.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token
