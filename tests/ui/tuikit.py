"""A fake app for the TUI's in-process tests: the real bus, state store and metrics registry,
with a recording control, look-ups and HTTP log; and a harness that runs the real
prompt_toolkit application on a pipe input and draws its screen at a chosen size."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.layout.mouse_handlers import MouseHandlers
from prompt_toolkit.layout.screen import Screen, WritePosition
from prompt_toolkit.output import DummyOutput

from kubefwd.events.bus import EventBus
from kubefwd.events.metrics import MetricsRegistry
from kubefwd.events.store import StateStore
from kubefwd.events.types import ForwardBound, LogLine, TunnelFailed
from kubefwd.ui.tui.app import Tui


@dataclass
class Watched:
    context: str
    namespace: str


class FakeControl:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.calls: list[tuple[Any, ...]] = []
        self.contexts = ["one"]

    def namespaces(self) -> list[Watched]:
        return [Watched("one", "shop"), Watched("one", "payments")]

    def reconnect(self, key: str) -> None:
        self.calls.append(("reconnect", key))

    def reconnect_errored(self) -> list[str]:
        keys = [f.key for f in self.store.snapshot() if f.status == "error"]
        self.calls.append(("reconnect_errored", *keys))
        return keys

    def remove_service(self, key: str) -> None:
        self.calls.append(("remove_service", key))

    def add_namespace(self, namespace: str, context: str | None = None) -> None:
        self.calls.append(("add_namespace", namespace, context))

    def add_service(self, namespace: str, service: str, context: str | None = None) -> None:
        self.calls.append(("add_service", namespace, service, context))


class FakeLookups:
    def __init__(self) -> None:
        self.log_lines = [f"line {i}" for i in range(150)]
        self.streams = 0
        self.stopped = threading.Event()

    def contexts(self) -> list[str]:
        return ["one", "two"]

    def namespaces(self, context: str | None = None) -> list[dict[str, Any]]:
        return [{"metadata": {"name": n}} for n in ("payments", "shop", "zoo")]

    def services(self, namespace: str, context: str | None = None) -> list[dict[str, Any]]:
        return [{"metadata": {"name": n}} for n in ("api", "echo")]

    def pod_logs(self, namespace: str, pod: str, *, context: str | None = None,
                 container: str | None = None, tail_lines: int | None = 100,
                 since_seconds: int | None = None, follow: bool = False,
                 stop: threading.Event | None = None) -> Iterator[str]:
        self.streams += 1
        assert stop is not None
        lines = self.log_lines[-tail_lines:] if tail_lines else self.log_lines
        yield from (f"{pod}: {line}" for line in lines)
        while follow and not stop.wait(0.05):
            pass
        self.stopped.set()


@dataclass(frozen=True)
class Exchange:
    time: float
    key: str
    port: int
    method: str
    path: str
    status: int | None
    latency_ms: float | None
    size: int | None


@dataclass
class FakeHttp:
    exchanges: list[Exchange] = field(default_factory=list)

    def recent(self, key: str, limit: int = 100) -> list[Exchange]:
        return [e for e in self.exchanges if e.key == key][-limit:]


class FakeApp:
    def __init__(self, services: int = 3, *, http: bool = True) -> None:
        self.bus = EventBus()
        self.store = StateStore()
        self.bus.attach(self.store.fold)
        self.metrics = MetricsRegistry()
        self.control = FakeControl(self.store)
        self.lookups = FakeLookups()
        self.stop_requested = threading.Event()
        if http:
            self.http = FakeHttp()
        names = ["web", "api", "cart", "db", "search", "mail", "queue", "auth"]
        for i in range(services):
            name = names[i] if i < len(names) else f"svc{i:04d}"
            ns = "shop" if i % 2 == 0 else "payments"
            self.bind(name, ns, i)

    def bind(self, name: str, ns: str, i: int, pod_port: str = "80") -> None:
        self.bus.publish(ForwardBound(
            key=f"one/{ns}/{name}", context="one", namespace=ns, service=name,
            ip=f"127.1.27.{i + 1}", names=(name, f"{name}.{ns}"), ports=("80",),
            pod=f"{ns}/{name}-abc", pod_ports=(pod_port,)))

    def fail(self, key: str, message: str = "pod refused") -> None:
        self.bus.publish(TunnelFailed(key=key, pod="x", message=message))

    def log(self, message: str) -> None:
        self.bus.publish(LogLine(level="info", message=message))


class SizedOutput(DummyOutput):
    def __init__(self, columns: int, rows: int) -> None:
        self.size = Size(rows=rows, columns=columns)

    def get_size(self) -> Size:
        return self.size


class Harness:
    """The TUI of a ``FakeApp`` running on its own thread, fed keys through a pipe."""

    def __init__(self, app: FakeApp, columns: int = 80, rows: int = 24) -> None:
        self.app = app
        self.columns, self.rows = columns, rows
        self.copied: list[str] = []
        self.clipboard_problem: str | None = None
        self._pipe_cm = create_pipe_input()
        self.input = self._pipe_cm.__enter__()
        self.tui = Tui(app, input=self.input, output=SizedOutput(columns, rows),
                       copier=self._copy)
        self.view = self.tui.view
        self.thread = threading.Thread(target=self.tui.run, name="tui-under-test")

    def _copy(self, text: str) -> str | None:
        if self.clipboard_problem is None:
            self.copied.append(text)
        return self.clipboard_problem

    def keys(self, text: str, settle: float = 0.15) -> None:
        self.input.send_text(text)
        time.sleep(settle)
        self._sync()

    def _sync(self) -> None:
        """Wait until the application's loop has gone round twice more: the keys sent are
        handled by then even on a loaded machine (the settle time alone is a guess)."""
        loop = self.tui.application.loop
        if loop is None or not self.thread.is_alive():
            return
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: loop.call_soon(done.set))
        done.wait(5)

    def screen(self) -> list[str]:
        """The whole screen drawn at the harness's size, one string per line (drawn in the
        application's own loop, so it never races a redraw)."""
        loop = self.tui.application.loop
        if loop is None or not self.thread.is_alive():
            return self._draw()
        done = threading.Event()
        result: list[list[str]] = []

        def draw() -> None:
            try:
                result.append(self._draw())
            finally:
                done.set()

        loop.call_soon_threadsafe(draw)
        assert done.wait(5), "the application did not draw"
        return result[0]

    def _draw(self) -> list[str]:
        screen = Screen()
        self.tui.screen.container.write_to_screen(
            screen, MouseHandlers(), WritePosition(0, 0, self.columns, self.rows), "", True,
            None)
        out = []
        for y in range(self.rows):
            row = screen.data_buffer[y]
            out.append("".join(row[x].char for x in range(self.columns)).rstrip())
        return out

    def text(self) -> str:
        return "\n".join(self.screen())


@contextmanager
def running(app: FakeApp, columns: int = 80, rows: int = 24) -> Iterator[Harness]:
    h = Harness(app, columns, rows)
    h.thread.start()
    time.sleep(0.3)
    try:
        yield h
    finally:
        if h.thread.is_alive():
            h.input.send_text("\x03")  # Ctrl-C
        h.thread.join(10)
        h._pipe_cm.__exit__(None, None, None)
        app.bus.close()
        assert not h.thread.is_alive()
