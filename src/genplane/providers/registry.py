"""Which provider adapters this deployment runs, from settings."""

from __future__ import annotations

from genplane.providers.base import ProviderAdapter
from genplane.providers.local import LocalProvider
from genplane.settings import Settings


def build_providers(settings: Settings) -> dict[str, ProviderAdapter]:
    return {"local": LocalProvider(delay_seconds=settings.local_provider_delay_seconds)}
