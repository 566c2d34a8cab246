"""The orchestrator (being built)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SvcOptions:
    """Everything ``kubefwd svc`` was asked to do, validated."""

    kubeconfig: str | None = None
    contexts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    label_selector: str = ""
    field_selector: str = ""
    domain: str = ""
    mappings: dict[int, int] = field(default_factory=dict)
    reservations: dict[str, str] = field(default_factory=dict)
    base_ip: str | None = None
    timeout: float = 300.0
    hosts_path: Path = Path("/etc/hosts")
    refresh_backup: bool = False
    purge_stale: bool = False
    resync_interval: float = 300.0
    retry_interval: float = 10.0
    auto_reconnect: bool = False
    verbose: bool = False
    transport: str = "auto"


class Kubefwd:
    def __init__(self, options: SvcOptions) -> None:
        self.options = options

    def run(self) -> int:
        raise NotImplementedError
