"""The state of the screen and what each key does to it, without prompt_toolkit.

``View`` holds the selection (by forward key, so it stays on its row when the order
changes), the scroll offset, the filter, the sort, the open detail view and its tab, the
pending confirmation, the log pane and the one-line message. Actions that talk to the core
(reconnect, remove, add) go through ``app.control`` on a worker thread of their own, so a
slow one never freezes the screen; look-ups go through ``app.lookups`` the same way.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubefwd.events.bus import Subscription
from kubefwd.events.types import (
    ErrorRaised,
    ForwardBound,
    ForwardUnbound,
    LogLine,
    Ready,
    SubscriberDropped,
    WarningRaised,
)
from kubefwd.ui.text import format_event
from kubefwd.ui.tui import model
from kubefwd.ui.tui.model import Row

log = logging.getLogger("kubefwd.ui.tui")

TABS = ("Info", "HTTP", "Logs")
LOG_KEEP = 1000
LOGGED = (ForwardBound, ForwardUnbound, Ready, LogLine, WarningRaised, ErrorRaised,
          SubscriberDropped)

Copier = Callable[[str], "str | None"]  # copies text; returns None or why it could not


def default_copier(text: str) -> str | None:
    """Copy with pyperclip; the reason when this machine has no clipboard."""
    try:
        import pyperclip  # type: ignore[import-untyped]
    except ImportError:
        return "no clipboard library (pip install pyperclip)"
    try:
        pyperclip.copy(text)
    except Exception as exc:  # pyperclip raises its own exception class, or OSError
        return f"no clipboard on this machine ({str(exc).splitlines()[0][:60]})"
    return None


@dataclass
class Browser:
    """The ``f`` browser: contexts → namespaces → services."""

    level: str = "contexts"  # "contexts", "namespaces", "services"
    context: str = ""
    namespace: str = ""
    items: list[str] = field(default_factory=list)
    selected: int = 0
    loading: bool = False
    error: str = ""


class View:
    """Everything the screen shows besides the raw data, and the actions of the keys."""

    def __init__(self, app: Any, *, copier: Copier = default_copier,
                 invalidate: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.copier = copier
        self.invalidate = invalidate
        self.sort = "hostname"
        self.compact = False
        self.bandwidth = True
        self.filter = ""
        self.filtering = False  # the filter line has the keyboard
        self.selected: str | None = None  # key of the selected forward
        self.offset = 0  # first table row shown
        self.page = 10  # rows the table showed last (for PgUp/PgDn)
        self.detail = False
        self.tab = 0
        self.focus_log = False
        self.help = False
        self.confirm: tuple[str, Callable[[], None]] | None = None
        self.browser: Browser | None = None
        self.message = ""
        self.message_at = 0.0
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_KEEP)
        self.log_offset = 0  # lines scrolled up from the bottom
        self.log_seen = 0
        self.pod_log: Any = None  # the Logs tab's follower, when open
        self.pod_log_offset = 0
        self.quit_requested = False
        self._rows_cache: tuple[Any, ...] = ()
        self._rows: list[Row] = []
        self._base: list[Row] = []
        self._base_version = -1
        self._index: dict[str, int] = {}
        self._shape: tuple[bool, bool, int, int] = (False, False, 8, 15)
        self._counts: tuple[int, Any] | None = None
        self._merged: dict[str, tuple[tuple[int, int], Row, Row]] = {}
        self._workers: list[threading.Thread] = []
        self._sub: Subscription | None = None

    # -- data -------------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Start collecting log lines (call before the app starts, to have its first ones)."""
        self._sub = self.app.bus.subscribe("tui log", types=LOGGED, maxsize=10_000)

    def pump(self) -> bool:
        """Take the queued log lines; True when there were any."""
        if self._sub is None:
            return False
        events = self._sub.drain()
        for event in events:
            line = format_event(event)
            if line is not None:
                stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
                self.log.append(f"{stamp} {line}")
                self.log_seen += 1
                if self.log_offset:
                    self.log_offset += 1  # scrolled up: stay on the same lines
        return bool(events)

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
        self.close_pod_log()
        for worker in self._workers:
            worker.join(15.0)

    def rows(self) -> list[Row]:
        """The rows shown, filtered and sorted, without their figures (``with_metrics`` adds
        them to the few rows drawn). The order is rebuilt only when the store's version, the
        filter or the sort change (and, sorted by rate, when the rates are sampled again), so
        a key press costs the rows on screen, not every forward."""
        metrics = self.app.metrics
        rate_seq = metrics.seq if self.sort == "rate" else -1
        sig = (self.app.store.version, self.filter, self.sort, rate_seq)
        if sig != self._rows_cache:
            version = self.app.store.version
            if self._base_version != version:
                self._base = model.build_rows(self.app.store.snapshot(), {})
                self._base_version = version
            rates = metrics.rates() if self.sort == "rate" else None
            self._rows = model.sort_rows(model.filter_rows(self._base, self.filter), self.sort,
                                         rates)
            self._index = {row.key: i for i, row in enumerate(self._rows)}
            self._shape = _shape(self._rows)
            self._rows_cache = sig
            self._keep_selection()
        return self._rows

    def shape(self) -> tuple[bool, bool, int, int]:
        """Of the rows shown: more than one namespace, more than one context, the widest
        host name and address (of the first 500)."""
        self.rows()
        return self._shape

    def with_metrics(self, row: Row) -> Row:
        """``row`` with its forward's figures, at most a second old (rates are sampled once a
        second: reading them more often shows nothing new)."""
        stamp = (self.app.metrics.seq, int(time.monotonic()))
        cached = self._merged.get(row.key)
        if cached is not None and cached[0] == stamp and cached[1] is row:
            return cached[2]
        m = self.app.metrics.forward(row.key)
        merged = row if m is None else dataclasses.replace(
            row, bytes_in=m.bytes_in, bytes_out=m.bytes_out, rate_in=m.rate_in,
            rate_out=m.rate_out, open=m.open, history=m.history)
        if len(self._merged) > 4 * max(self.page, 50):
            self._merged.clear()
        self._merged[row.key] = (stamp, row, merged)
        return merged

    def counts(self) -> Any:
        """The store's counts, computed once per store version."""
        version = self.app.store.version
        if self._counts is None or self._counts[0] != version:
            self._counts = (version, self.app.store.counts())
        return self._counts[1]

    def selected_row(self) -> Row | None:
        rows = self.rows()
        i = self._index.get(self.selected) if self.selected is not None else None
        return self.with_metrics(rows[i]) if i is not None else None

    def index(self) -> int:
        self.rows()
        return self._index.get(self.selected, 0) if self.selected is not None else 0

    def _keep_selection(self) -> None:
        rows = self._rows
        if not rows:
            return
        if self.selected is None or all(r.key != self.selected for r in rows):
            self.selected = rows[0].key

    # -- messages ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.message = text
        self.message_at = time.monotonic()
        self.invalidate()

    # -- moving -----------------------------------------------------------------------------

    def move(self, delta: int) -> None:
        rows = self.rows()
        if not rows:
            return
        i = max(0, min(len(rows) - 1, self.index() + delta))
        self.selected = rows[i].key

    def home(self) -> None:
        rows = self.rows()
        if rows:
            self.selected = rows[0].key

    def end(self) -> None:
        rows = self.rows()
        if rows:
            self.selected = rows[-1].key

    def select_at(self, visible_index: int) -> None:
        rows = self.rows()
        i = self.offset + visible_index
        if 0 <= i < len(rows):
            self.selected = rows[i].key

    def visible(self, height: int) -> list[Row]:
        """The rows that fit ``height`` lines, scrolled so the selection shows."""
        rows = self.rows()
        self.page = max(1, height)
        i = self.index()
        if i < self.offset:
            self.offset = i
        elif i >= self.offset + height:
            self.offset = i - height + 1
        self.offset = max(0, min(self.offset, max(0, len(rows) - height)))
        return [self.with_metrics(row) for row in rows[self.offset:self.offset + height]]

    # -- settings ---------------------------------------------------------------------------

    def toggle_compact(self) -> None:
        self.compact = not self.compact
        self.say("compact view" if self.compact else "full view")

    def toggle_bandwidth(self) -> None:
        self.bandwidth = not self.bandwidth
        self.say("bandwidth columns shown" if self.bandwidth else "bandwidth columns hidden")

    def cycle_sort(self) -> None:
        self.sort = model.next_sort(self.sort)
        self.say(f"sorted by {self.sort}")

    def start_filter(self) -> None:
        self.filtering = True

    def set_filter(self, text: str) -> None:
        self.filter = text

    def keep_filter(self) -> None:
        self.filtering = False

    def clear_filter(self) -> None:
        self.filtering = False
        self.filter = ""

    # -- detail -----------------------------------------------------------------------------

    def open_detail(self) -> None:
        if self.selected_row() is None:
            return
        self.detail = True
        self.tab = 0
        self.close_pod_log()

    def close_detail(self) -> None:
        self.detail = False
        self.close_pod_log()

    def next_tab(self, delta: int = 1) -> None:
        self.tab = (self.tab + delta) % len(TABS)
        self.close_pod_log()
        if TABS[self.tab] == "Logs":
            self.open_pod_log()

    def open_pod_log(self) -> None:
        from kubefwd.ui.tui.logs import PodLogFollower

        row = self.selected_row()
        lookups = getattr(self.app, "lookups", None)
        self.pod_log_offset = 0
        if row is None:
            return
        state = self.app.store.get(row.key)
        ref = model.pod_ref(state.pod if state else None, row.context, row.namespace)
        self.pod_log = PodLogFollower(lookups, ref, self.invalidate)
        self.pod_log.start()

    def close_pod_log(self) -> None:
        follower, self.pod_log = self.pod_log, None
        if follower is not None:
            follower.stop_and_join(5.0)

    def scroll_pod_log(self, delta: int) -> None:
        if self.pod_log is None:
            return
        total = len(self.pod_log.lines)
        self.pod_log_offset = max(0, min(total, self.pod_log_offset + delta))
        if self.pod_log_offset:
            self.pod_log.frozen_at = self.pod_log.received - self.pod_log_offset
        else:
            self.pod_log.frozen_at = None

    def copy(self, number: int) -> None:
        """Copy connect string ``number`` (1-based) of the selected forward."""
        row = self.selected_row()
        if row is None:
            return
        strings = model.connect_strings(row)
        if not 1 <= number <= len(strings):
            self.say(f"no connect string {number}")
            return
        text = strings[number - 1]
        problem = self.copier(text)
        self.say(f"copied {text}" if problem is None else f"cannot copy {text}: {problem}")

    # -- log pane ---------------------------------------------------------------------------

    def toggle_focus(self) -> None:
        self.focus_log = not self.focus_log

    def scroll_log(self, delta: int) -> None:
        self.log_offset = max(0, min(len(self.log) - 1, self.log_offset + delta))

    # -- actions through the command path ---------------------------------------------------

    def _background(self, name: str, fn: Callable[[], str | None]) -> None:
        def work() -> None:
            try:
                result = fn()
            except Exception as exc:
                self.say(f"{exc}")
            else:
                if result:
                    self.say(result)

        self._workers = [w for w in self._workers if w.is_alive()]
        worker = threading.Thread(target=work, name=f"kubefwd/tui-{name}", daemon=True)
        self._workers.append(worker)
        worker.start()

    def reconnect_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        key = row.key
        self.say(f"reconnecting {row.host}…")
        self._background("reconnect", lambda: self._reconnect(key, row.host))

    def _reconnect(self, key: str, host: str) -> str:
        self.app.control.reconnect(key)
        return f"reconnect requested for {host}"

    def reconnect_errored(self) -> None:
        def work() -> str:
            keys = self.app.control.reconnect_errored()
            return (f"reconnecting {len(keys)} errored forward(s)" if keys
                    else "no forward is in error")

        self._background("reconnect-all", work)

    def ask_remove(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        # A headless service's per-pod forwards are removed with their service.
        service_key = "/".join(row.key.split("/")[:3])
        self.confirm = (f"remove {row.host} ({service_key})? y to confirm, any other key "
                        "cancels", lambda: self._background(
                            "remove", lambda: self._remove(service_key)))

    def _remove(self, key: str) -> str:
        self.app.control.remove_service(key)
        return f"removed {key}"

    def answer(self, yes: bool) -> None:
        pending, self.confirm = self.confirm, None
        if pending is None:
            return
        if yes:
            pending[1]()
        else:
            self.say("cancelled")

    # -- the browser ------------------------------------------------------------------------

    def open_browser(self) -> None:
        self.browser = Browser()
        self._browse_load()

    def close_browser(self) -> None:
        self.browser = None

    def _browse_load(self) -> None:
        b = self.browser
        lookups = getattr(self.app, "lookups", None)
        if b is None:
            return
        if lookups is None:
            b.error = "look-ups are not available"
            return
        b.loading = True
        b.items = []
        b.selected = 0
        b.error = ""

        def work() -> str | None:
            try:
                if b.level == "contexts":
                    items = list(lookups.contexts())
                elif b.level == "namespaces":
                    items = [o["metadata"]["name"] for o in lookups.namespaces(b.context)]
                else:
                    items = [o["metadata"]["name"]
                             for o in lookups.services(b.namespace, b.context)]
                b.items = sorted(items) if b.level != "contexts" else items
            except Exception as exc:
                b.error = str(exc)
            b.loading = False
            self.invalidate()
            return None

        self._background("browse", work)

    def browse_move(self, delta: int) -> None:
        b = self.browser
        if b is not None and b.items:
            b.selected = max(0, min(len(b.items) - 1, b.selected + delta))

    def browse_open(self) -> None:
        """Right/l: into the selected context or namespace."""
        b = self.browser
        if b is None or not b.items or b.loading:
            return
        item = b.items[b.selected]
        if b.level == "contexts":
            b.context, b.level = item, "namespaces"
        elif b.level == "namespaces":
            b.namespace, b.level = item, "services"
        else:
            return
        self._browse_load()

    def browse_back(self) -> None:
        b = self.browser
        if b is None:
            return
        if b.level == "services":
            b.level = "namespaces"
        elif b.level == "namespaces":
            b.level = "contexts"
        else:
            self.close_browser()
            return
        self._browse_load()

    def browse_enter(self) -> None:
        """Enter: into a context; forward a whole namespace, or one service."""
        b = self.browser
        if b is None or not b.items or b.loading:
            return
        item = b.items[b.selected]
        if b.level == "contexts":
            self.browse_open()
            return
        control = self.app.control
        ctx = b.context
        if b.level == "namespaces":
            self.say(f"forwarding namespace {item}…")
            self._background("add", lambda: _done(control.add_namespace(item, ctx),
                                                  f"forwarding every service of {item}"))
        else:
            ns = b.namespace
            self.say(f"forwarding {item}.{ns}…")
            self._background("add", lambda: _done(control.add_service(ns, item, ctx),
                                                  f"forwarding {item}.{ns}"))
        self.close_browser()

    # -- quitting ---------------------------------------------------------------------------

    def quit(self) -> None:
        self.quit_requested = True


def _shape(rows: list[Row]) -> tuple[bool, bool, int, int]:
    namespaces = {(r.context, r.namespace) for r in rows}
    contexts = {r.context for r in rows}
    host_w = max((len(r.host) for r in rows[:500]), default=8)
    addr_w = max((len(r.address) for r in rows[:500]), default=15)
    return len(namespaces) > 1, len(contexts) > 1, host_w, addr_w


def _done(_result: object, message: str) -> str:
    return message
