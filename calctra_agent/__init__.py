"""Calctra Agent: turns a machine into a resource on the Calctra compute marketplace."""

__version__ = "0.1.0"
__all__ = ["__version__"]
