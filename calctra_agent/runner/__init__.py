"""Running jobs in isolated containers."""

__all__: list[str] = []
