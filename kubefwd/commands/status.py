"""``kubefwd status``: the kubefwd instances running on this machine, read from the markers
of their hosts lines and their live processes (psutil): pid, start, contexts and namespaces
(from the command line), forwards with addresses and names. An instance that serves the API
(its key file says where) is asked too, for every service with its status; one with an API
and no hosts lines here (idle mode, another hosts file) is listed from its key file."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer

from kubefwd.commands.svc import check_hosts_path
from kubefwd.errors import UsageError

_ETC_HOSTS = Path("/etc/hosts")
OUTPUTS = ("text", "json")
API_TIMEOUT = 3.0
PAGE = 1000


def _values(argv: Sequence[str], short: str, long: str) -> list[str]:
    """Every value of ``-s V``, ``-sV``, ``--long V`` and ``--long=V`` in ``argv`` (before
    ``--``), split on commas."""
    out: list[str] = []
    args = list(argv[:argv.index("--")] if "--" in argv else argv)
    for i, arg in enumerate(args):
        value: str | None = None
        if arg in (short, long) and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(long + "="):
            value = arg[len(long) + 1:]
        elif arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            value = arg[len(short):]
        if value:
            out += [v for v in value.split(",") if v and v not in out]
    return out


def describe(pid: int, forwards: dict[str, list[str]], alive: bool) -> dict[str, Any]:
    """One instance as ``status`` shows it."""
    info: dict[str, Any] = {"pid": pid, "alive": alive, "started": None, "contexts": [],
                            "namespaces": [], "all_namespaces": False}
    if alive:
        try:
            proc = psutil.Process(pid)
            argv = proc.cmdline()
            info["started"] = datetime.fromtimestamp(proc.create_time(), timezone.utc) \
                .isoformat(timespec="seconds")
            info["contexts"] = _values(argv, "-x", "--context")
            info["namespaces"] = _values(argv, "-n", "--namespace")
            own = argv[:argv.index("--")] if "--" in argv else argv
            info["all_namespaces"] = "-A" in own or "--all-namespaces" in own
        except psutil.Error:
            pass
    info["forwards"] = [{"ip": ip, "names": names} for ip, names in forwards.items()]
    return info


def ask_api(url: str, key: str, timeout: float = API_TIMEOUT) -> dict[str, Any]:
    """``{"url", "services": [{key, status, ip, ports, names}, ...]}`` from a running
    instance's API, or ``{"url", "error"}`` when it does not answer as it should."""
    from kubefwd.api.client import ApiClient, ApiFailure, ApiUnavailable

    client = ApiClient(url, key, timeout=timeout)
    services: list[dict[str, Any]] = []
    try:
        while True:
            page = client.get("/api/v1/services", limit=PAGE, offset=len(services))
            items = page["items"]
            services += [{"key": i["key"], "status": i["status"], "ip": i["ip"],
                          "ports": i["ports"], "names": i["names"]} for i in items]
            if not items or len(services) >= int(page["total"]):
                break
    except ApiUnavailable:
        return {"url": url, "error": "no answer"}
    except ApiFailure as exc:
        return {"url": url, "error": f"{exc.status} {exc.code}: {exc}"}
    except (KeyError, TypeError, ValueError):
        return {"url": url, "error": "an answer that is not the API's"}
    return {"url": url, "services": services}


def with_apis(shown: list[dict[str, Any]], endpoints: Sequence[Any]) -> list[dict[str, Any]]:
    """``shown`` with each instance's API answer (``api``: None without one), and the
    instances only a key file knows of, after the others."""
    by_pid = {e.pid: e for e in endpoints}
    out = []
    for info in shown:
        endpoint = by_pid.pop(info["pid"], None)
        alive = info["alive"] and endpoint is not None
        out.append({**info, "api": ask_api(endpoint.url, endpoint.key) if alive else None})
    for endpoint in by_pid.values():
        info = describe(endpoint.pid, {}, True)
        out.append({**info, "api": ask_api(endpoint.url, endpoint.key)})
    return out


def status_command(
    hosts_path: Annotated[Path, typer.Option("--hosts-path", metavar="FILE",
                                             help="Hosts file to read.")] = _ETC_HOSTS,
    output: Annotated[str, typer.Option("--output", "-o", metavar="text|json",
                                        help="text, or one JSON document.")] = "text",
) -> int:
    """List the kubefwd instances running on this machine and what they forward."""
    from kubefwd.api.keys import read_endpoints
    from kubefwd.hosts.instances import instances

    if output not in OUTPUTS:
        raise UsageError(f"-o/--output '{output}': choose one of {', '.join(OUTPUTS)}")
    path = check_hosts_path(hosts_path)
    found = instances(path) if path.exists() else []
    shown = with_apis([describe(i.pid, i.forwards, i.alive) for i in found],
                      read_endpoints())
    if output == "json":
        json.dump({"hosts": str(path), "instances": shown}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not shown:
        typer.echo(f"no kubefwd instance has lines in {path} or serves an API")
        return 0
    for info in shown:
        state = "running" if info["alive"] else "not running (kubefwd clean removes its lines)"
        typer.echo(f"pid {info['pid']}: {state}")
        if info["alive"]:
            namespaces = "all" if info["all_namespaces"] else \
                ", ".join(info["namespaces"]) or "(the context's)"
            typer.echo(f"  started {info['started']}; contexts: "
                       f"{', '.join(info['contexts']) or '(current)'}; "
                       f"namespaces: {namespaces}")
        api = info["api"]
        if api is not None and "services" in api:
            typer.echo(f"  API {api['url']}: {len(api['services'])} service(s)")
            for svc in api["services"]:
                ports = ",".join(str(p) for p in svc["ports"])
                where = f"{svc['ip']}:{ports}" if svc["ip"] and ports else svc["ip"] or "-"
                typer.echo(f"  {svc['status']:<12} {svc['key']:<32} {where:<22} "
                           f"{' '.join(svc['names'])}")
            continue
        if api is not None:
            typer.echo(f"  API {api['url']}: {api['error']}; from the hosts file:")
        for fwd in info["forwards"]:
            typer.echo(f"  {fwd['ip']}\t{' '.join(fwd['names'])}")
    return 0
