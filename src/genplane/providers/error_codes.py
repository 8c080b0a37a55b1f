"""Provider error codes to contract errors: the rule every code-reading adapter follows.

Some providers say the decisive thing in an error *code* rather than the HTTP status (a
moderation refusal or an account in arrears answer a plain 400 or 403). Which code means
what is each adapter's protocol knowledge; what a meaning implies is the same for all:
a refused content, an empty account or a bad input fails the same way again, so it is
final, while an unavailable provider may serve later. A code nobody knows keeps what
the status code alone said, or is a passing provider error when there was no status.
"""

from __future__ import annotations

from genplane.contract.errors import ErrorName
from genplane.providers.base import ProviderError

# (meaning, code prefixes), tried in order: the first entry whose prefixes a code starts with wins.
CodeMeanings = tuple[tuple[ErrorName, tuple[str, ...]], ...]

FINAL_MEANINGS: frozenset[ErrorName] = frozenset(
    {"bse_content_policy_violation", "bse_provider_credits_exhausted", "bse_invalid_input"}
)


def meaning_by_prefix(code: str, meanings: CodeMeanings) -> ErrorName | None:
    """The meaning of the first entry one of whose prefixes ``code`` starts with."""
    return next((meaning for meaning, prefixes in meanings if code.startswith(prefixes)), None)


def coded_error(meaning: ErrorName | None, text: str, fallback: ProviderError | None = None) -> ProviderError:
    """The error for a code of known ``meaning``; for an unknown one ``fallback`` (the status's)."""
    if meaning is not None:
        return ProviderError(meaning, text, retryable=meaning not in FINAL_MEANINGS)
    if fallback is not None:
        return fallback
    return ProviderError("bse_provider_error", text, retryable=True)
