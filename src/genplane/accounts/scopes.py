"""Key scopes and the presets the contract names."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    ACCOUNT_READ = "account:read"
    GENERATION_WRITE = "generation:write"
    GENERATION_READ = "generation:read"
    GENERATION_DELETE = "generation:delete"
    LIBRARY_READ = "library:read"
    HEALTH_READ = "health:read"


ALL_SCOPES: tuple[Scope, ...] = tuple(Scope)

PRESETS: dict[str, tuple[Scope, ...]] = {
    "full_access": ALL_SCOPES,
    "generate_only": (Scope.GENERATION_WRITE, Scope.GENERATION_READ, Scope.LIBRARY_READ),
    "read_only": (Scope.GENERATION_READ, Scope.ACCOUNT_READ, Scope.HEALTH_READ, Scope.LIBRARY_READ),
    "monitor_only": (Scope.HEALTH_READ, Scope.LIBRARY_READ),
}


def parse_scopes(preset: str | None, scopes: list[str] | None) -> list[str]:
    """Resolve a preset or an explicit list into a validated, ordered scope list."""
    if preset and scopes:
        raise ValueError("give a preset or explicit scopes, not both")
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return [s.value for s in PRESETS[preset]]
    chosen = scopes or []
    if not chosen:
        raise ValueError("a key needs at least one scope")
    valid = {s.value for s in Scope}
    unknown = [s for s in chosen if s not in valid]
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    return [s.value for s in Scope if s.value in chosen]
