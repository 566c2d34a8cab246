"""``kubefwd mcp``: an MCP server on stdio for IDEs and AI assistants, bridging to the REST
API of a running kubefwd (``--api-url``/``--api-key``, ``KUBEFWD_API_URL``/``KUBEFWD_API_KEY``,
else the newest running instance's key file)."""

from __future__ import annotations

import os
from typing import Annotated

import typer


def mcp_command(
    api_url: Annotated[str | None, typer.Option("--api-url", metavar="URL",
                                                help="The API of the kubefwd to drive.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", metavar="KEY",
                                                help="Its key (default: from its key file).")]
    = None,
) -> int:
    """Serve kubefwd's tools to an AI assistant over MCP (stdio)."""
    from kubefwd.api.client import ApiClient
    from kubefwd.api.keys import KEY_ENV, URL_ENV, read_endpoints
    from kubefwd.api.mcpserver import build_server

    url = api_url or os.environ.get(URL_ENV) or None
    key = api_key or os.environ.get(KEY_ENV) or None
    if url is None or key is None:
        found = read_endpoints()
        match = next((e for e in found if url is None or e.url.rstrip("/") == url.rstrip("/")),
                     None)
        if match is not None:
            url = url or match.url
            key = key or match.key
    build_server(ApiClient(url, key)).run("stdio")
    return 0
