"""An embedded reference implementation of the Calctra API, for tests, demos and local use."""

from calctra_agent.server_stub._app import create_app
from calctra_agent.server_stub._serve import serve
from calctra_agent.server_stub._settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
