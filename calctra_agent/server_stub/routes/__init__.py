"""The API's routers, one module per part of the reference."""
