"""Provider adapters that turn generation jobs into media bytes."""
