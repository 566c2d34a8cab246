"""``kubefwd clean``: remove the hosts lines (and, on macOS, the loopback aliases) that
kubefwd instances no longer running left behind, without starting anything; with ``--all``
those of running ones too, after asking (or ``-y``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from kubefwd.commands.svc import check_hosts_path

_ETC_HOSTS = Path("/etc/hosts")


def clean_command(
    hosts_path: Annotated[Path, typer.Option("--hosts-path", metavar="FILE",
                                             help="Hosts file to clean.")] = _ETC_HOSTS,
    all_instances: Annotated[bool, typer.Option(
        "--all", metavar="", help="Also remove the lines of running instances.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", metavar="",
                                      help="Do not ask before touching running ones.")] = False,
) -> int:
    """Remove the hosts lines of kubefwd instances that are no longer running."""
    from kubefwd.hosts.instances import instances, remove_owners
    from kubefwd.system.loopback import MacLoopback

    path = check_hosts_path(hosts_path)
    found = instances(path) if path.exists() else []
    dead = [i for i in found if not i.alive]
    live = [i for i in found if i.alive]
    chosen = list(dead)
    if all_instances and live:
        pids = ", ".join(str(i.pid) for i in live)
        if yes or (sys.stdin.isatty() and typer.confirm(
                f"remove the lines of running kubefwd pid {pids}?", default=False)):
            chosen += live
        else:
            typer.echo(f"kept the lines of running kubefwd pid {pids} (confirm, or use -y)")
    if not chosen:
        typer.echo(f"nothing to clean in {path}")
        return 0
    removed = remove_owners(path, [(i.pid, i.started) for i in chosen])
    typer.echo(f"removed {removed} lines of kubefwd pid "
               f"{', '.join(str(i.pid) for i in chosen)} from {path}")
    if MacLoopback.is_supported():  # elsewhere the whole of 127/8 answers without aliases
        in_use = {ip for i in live if i not in chosen for ip in i.forwards}
        loopback = MacLoopback()
        for inst in chosen:
            for ip in inst.forwards:
                if ip not in in_use:
                    subprocess.run(loopback.remove_command(ip), check=False,
                                   capture_output=True)
    return 0
