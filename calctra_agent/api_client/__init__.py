"""A client for the Calctra API."""

__all__: list[str] = []
