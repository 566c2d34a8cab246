"""``kubefwd mcp`` judged by the official MCP SDK's client: it starts the server over stdio,
lists the tools, and drives kubefwd (idle mode, running on the simulated cluster) through
them; the answers name the real addresses, and the services answer there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import http_text, wait_for
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_svc_e2e import (
    Kubefwd,
    hosts_entries,
)

pytestmark = pytest.mark.e2e

WANTED_TOOLS = {
    "add_namespace", "remove_namespace", "add_service", "remove_service",
    "get_connection_info", "list_services", "get_service", "find_services", "list_hostnames",
    "reconnect_service", "reconnect_errored", "sync", "list_contexts", "list_namespaces",
    "list_pods", "get_pod", "pod_logs", "namespace_events", "service_endpoints", "health",
    "quick_status", "metrics", "diagnose_errors", "analyze", "kubefwd_logs", "http_traffic",
    "history",
}


def _text(result: Any) -> str:
    assert not result.is_error if hasattr(result, "is_error") else True
    return "".join(getattr(c, "text", "") for c in result.content)


async def _session(env: dict[str, str], steps: Callable[[ClientSession], Any]) -> Any:
    params = StdioServerParameters(command=sys.executable, args=["-m", "kubefwd", "mcp"],
                                   env=env)
    with open(os.devnull, "w") as devnull:
        async with stdio_client(params, errlog=devnull) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await steps(session)


def test_mcp_client_drives_kubefwd(run: Callable[..., Kubefwd], hosts: Path,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("KUBEFWD_API_KEY", raising=False)
    fwd = run("--api-addr", "127.0.0.1:0")
    fwd.wait_line(r"^API: http://")
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), HOME=str(tmp_path))
    env.pop("KUBEFWD_API_URL", None)
    answers: dict[str, str] = {}

    async def steps(session: ClientSession) -> None:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert tools >= WANTED_TOOLS, WANTED_TOOLS - tools
        answers["add"] = _text(await session.call_tool("add_namespace", {"namespace": "shop"}))
        answers["list"] = _text(await session.call_tool("list_services", {}))
        answers["info"] = _text(await session.call_tool("get_connection_info",
                                                        {"service": "shop/web"}))
        answers["diagnose"] = _text(await session.call_tool("diagnose_errors", {}))
        resources = {str(r.uri) for r in (await session.list_resources()).resources}
        assert {"kubefwd://services", "kubefwd://status", "kubefwd://errors"} <= resources
        prompts = {p.name for p in (await session.list_prompts()).prompts}
        assert {"why_is_it_failing", "how_do_i_connect"} <= prompts

    anyio.run(_session, env, steps)
    assert json.loads(answers["add"])["namespace"] == "shop"
    names = wait_for(lambda: hosts_entries(hosts).get("web.shop") and hosts_entries(hosts),
                     10, "web.shop written")
    services = {s["key"]: s for s in json.loads(answers["list"])}
    assert services["one/shop/web"]["ip"] == names["web.shop"]
    info = json.loads(answers["info"])
    assert info["ip"] == names["web.shop"] and 80 in info["ports"]
    assert info["env"]["WEB_HOST"] == "web" and info["env"]["WEB_PORT"] == "80"
    # The address the assistant was given answers, with curl.
    out = subprocess.run(["curl", "-sS", "-m", "10", f"http://{info['ip']}:80/"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.startswith("web-"), out
    assert http_text(info["ip"], 80).startswith("web-")
    assert json.loads(answers["diagnose"])["failing"] == []
    fwd.stop_cleanly()


def test_every_tool_says_how_to_start_the_api_when_none_runs(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), HOME=str(tmp_path),
               KUBEFWD_API_URL="", KUBEFWD_API_KEY="")
    said: list[str] = []

    async def steps(session: ClientSession) -> None:
        for name in ("list_services", "quick_status", "analyze"):
            said.append(_text(await session.call_tool(name, {})))

    anyio.run(_session, env, steps)
    for text in said:
        assert text.startswith("kubefwd's API is not running: start kubefwd with it")
        assert text.count(".") <= 1 or "kubefwd svc --api" in text
