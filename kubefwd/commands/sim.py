"""``kubefwd sim``: serve a simulated cluster in the foreground."""

from __future__ import annotations

import signal
import threading
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Annotated, Optional

import typer

from kubefwd.errors import ConfigError, NetworkError, UsageError


def _sample_manifests() -> str:
    return resources.files("kubefwd.sim").joinpath("sample.yaml").read_text(encoding="utf-8")


def _check_kubeconfig_out(path: Path) -> None:
    """The kubeconfig goes to a file in an existing directory; say which part is wrong."""
    flag = f"--kubeconfig-out {path}"
    if path.is_dir():
        raise UsageError(f"{flag}: is a directory, not a file")
    parent = path.parent
    if not parent.exists():
        raise UsageError(f"{flag}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{flag}: {parent} is not a directory")


def sim_command(
    kubeconfig_out: Annotated[
        Path,
        typer.Option("--kubeconfig-out", "-o", metavar="FILE",
                     help="Where to write the kubeconfig (atomically, once the server is "
                     "ready)."),
    ],
    filename: Annotated[
        Optional[list[Path]],  # noqa: UP045 - typer reads this annotation at run time
        typer.Option("--filename", "-f", metavar="FILE", exists=True, dir_okay=False,
                     help="Manifest file(s) to load instead of the sample cluster (YAML or "
                     "JSON, multi-document)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=0, max=65535,
                                      help="Port to listen on (0: any free port).")] = 0,
    plain_http: Annotated[bool, typer.Option("--plain-http", metavar="",
                                             help="Serve plain HTTP instead of HTTPS.")] = False,
    context: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--context", metavar="NAME",
                     help="Context name(s) to write; repeat for more contexts pointing at the "
                     "same server. Default: sim."),
    ] = None,
    start_delay: Annotated[float, typer.Option("--start-delay", metavar="SECONDS", min=0.0,
                                               help="Seconds a pod stays Pending.")] = 0.0,
) -> None:
    """Serve a simulated Kubernetes cluster until Ctrl-C.

    The kubeconfig (HTTPS, its own CA, a bearer token) is written once the server is ready.
    Without -f it serves a sample cluster: namespaces shop and payments.
    """
    from kubefwd.sim.cluster import KubeconfigWriteError, SimCluster
    from kubefwd.sim.store import StatusError

    contexts = [c for item in (context or ["sim"]) for c in item.split(",") if c]
    _check_kubeconfig_out(kubeconfig_out)
    try:
        manifests: list[str] = (
            [p.read_text(encoding="utf-8") for p in filename] if filename
            else [_sample_manifests()]
        )
    except OSError as exc:
        raise UsageError(f"cannot read manifest: {exc}") from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = SimCluster(manifests=manifests, contexts=contexts, port=port, tls=not plain_http,
                         start_delay=start_delay, kubeconfig_path=kubeconfig_out)
    try:
        try:
            cluster.start()
        except StatusError as exc:
            raise ConfigError(f"manifest rejected: {exc.message}") from exc
        except KubeconfigWriteError as exc:
            raise UsageError(
                f"--kubeconfig-out {kubeconfig_out}: cannot write it in "
                f"{kubeconfig_out.parent} ({exc.strerror or exc})"
            ) from exc
        except OSError as exc:
            raise NetworkError(f"cannot serve on port {port}: {exc.strerror or exc}") from exc
        path = cluster.kubeconfig_path
        typer.echo(f"kubefwd sim: serving {cluster.url}; kubeconfig written to {path}")
        typer.echo(f"Try: kubectl --kubeconfig {path} get svc -A   "
                   f"(or: sudo kubefwd svc -c {path} -n shop)   Ctrl-C stops.")
        while not stop.wait(1.0):
            pass
        typer.echo("kubefwd sim: stopping")
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
