"""Calctra Agent: turns a machine into a resource on the Calctra compute marketplace."""

import sys

# httpx imports its own command-line client whenever click, pygments and rich are installed,
# as they are here for our CLI and the reference server: about 3-6 MB of modules in every
# process that talks HTTP (to the platform, to the Docker engine). Marking it absent makes
# httpx skip it; nothing here runs it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
__all__ = ["__version__"]
