"""Convoy's web UI: server-rendered pages on the API's HTTP listener, a thin face of the API.

Every page is one view module (`services.api.ui.views.*`) that reads and writes through
the same handler layer as gRPC and REST (`services.api.handlers.Api`, via `client.UiClient`),
with the caller's own token, so the UI can do exactly what its user could do with the CLI
and nothing else. The shell (`app`) owns sign-in, the CSRF check, time travel (`?at=`) and
the live stream; views hand plain data to one template each.
"""
