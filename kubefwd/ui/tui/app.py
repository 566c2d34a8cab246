"""Runs the view: a full-screen prompt_toolkit application in the main thread.

The forwards keep running on their own threads. A ticker in the application's loop looks
four times a second at what changed (the store's version, the metrics' sample, new log
lines, the open detail view's clock) and asks for one redraw when anything did, so a burst
of events is one redraw and an idle view costs next to nothing. Other threads (the pod log
follower, look-ups) get at most one redraw per ``THREAD_REDRAW_GAP``, the ticker draws what
they asked for sooner; a key press is drawn at once (no minimum interval between frames,
which made a key wait for the one before it).
The application ends on ``q``/Ctrl-C, or when the app is asked to stop (a signal): the
caller then runs the ordinary ordered shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from kubefwd.ui.tui import model
from kubefwd.ui.tui.keys import bindings
from kubefwd.ui.tui.view import Copier, View, default_copier
from kubefwd.ui.tui.widgets import MESSAGE_SECONDS, Screen, style_for

TICK = 0.25
FRAME_SWITCH_INTERVAL = 0.05
THREAD_REDRAW_GAP = 0.05


class Tui:
    """The view of one running app (``app`` offers ``bus``, ``store``, ``metrics``,
    ``control``, and optionally ``lookups`` and ``http``)."""

    def __init__(self, app: Any, *, theme: str = "auto", input: Input | None = None,
                 output: Output | None = None, copier: Copier = default_copier,
                 freeze_gc: bool = False) -> None:
        self.app = app
        # The process's own view (not an embedding program's): after the first redraw, what
        # the view built to draw it (the rows, the layout) is taken out of the collector's
        # sight, as the app did with its own start-up objects, so that a full collection in
        # the middle of a redraw does not scan them each time.
        self.freeze_gc = freeze_gc
        self.view = View(app, copier=copier, invalidate=self._invalidate)
        self.view.subscribe()
        self.filter_buffer = Buffer(multiline=False,
                                    on_text_changed=lambda b: self.view.set_filter(b.text))
        self.screen = Screen(self.view, self.filter_buffer)
        self.application: Application[None] = Application(
            layout=self.screen.layout,
            key_bindings=bindings(self.view, self._focus_filter),
            style=style_for(theme),
            full_screen=True,
            mouse_support=True,
            input=input,
            output=output,
        )
        self.application.ttimeoutlen = 0.05
        self.redraws = 0
        self._asked_at = 0.0  # the last redraw another thread asked for
        self._asked = False  # one asked for since, left to the ticker
        self._switch = sys.getswitchinterval()
        self.application.before_render += self._rendering
        self.application.after_render += self._rendered
        self._seen: tuple[Any, ...] = ()
        self._figures_at: tuple[int, int] = (-1, -1)
        self._figures: tuple[Any, ...] = ()
        self._moved: tuple[int, int, int] = (-1, -1, -1)
        self._moved_seq = 0  # the last sample with traffic, or with a count or row changed

    def _rendering(self, _app: Any) -> None:
        # The process's own view: no collection starts in the middle of a frame (a full one
        # costs tens of milliseconds with thousands of forwards); one that comes due while
        # drawing runs at the next allocation after it, on whichever thread makes it.
        if self.freeze_gc:
            gc.disable()
            # and the frame is not handed to a forwarding thread every 5 ms: it holds the
            # interpreter until done or until it waits (a frame takes ~10 ms of CPU).
            self._switch = sys.getswitchinterval()
            sys.setswitchinterval(FRAME_SWITCH_INTERVAL)

    def _rendered(self, _app: Any) -> None:
        self.redraws += 1
        if self.freeze_gc:
            gc.enable()
            sys.setswitchinterval(self._switch)
            if self.redraws == 1:
                gc.freeze()

    def _invalidate(self) -> None:
        """A redraw asked for by another thread: now, or by the ticker when one was asked
        for less than ``THREAD_REDRAW_GAP`` ago (a flood of pod log lines is a few frames)."""
        now = time.monotonic()
        if now - self._asked_at >= THREAD_REDRAW_GAP:
            self._asked_at = now
            self.application.invalidate()
        else:
            self._asked = True

    def _focus_filter(self, on: bool) -> None:
        layout = self.application.layout
        if on:
            self.filter_buffer.text = self.view.filter
            self.filter_buffer.cursor_position = len(self.filter_buffer.text)
            layout.focus(self.screen.filter_window)
        else:
            if not self.view.filter:
                self.filter_buffer.reset()
            layout.focus(self.screen.home)

    def _signature(self) -> tuple[Any, ...]:
        # What is on screen, cheaply: the figures are read again only when the metrics were
        # sampled (once a second) or the totals' byte counts may have moved, and only as the
        # text of the rows drawn, so a sample that changes nothing visible (no traffic, a
        # sparkline already flat) costs no redraw.
        metrics = self.app.metrics
        now = time.monotonic()
        stamp = (metrics.seq, int(now))
        if stamp != self._figures_at:
            self._figures_at = stamp
            totals = metrics.totals()
            moved = (totals.bytes_in, totals.bytes_out, self.app.store.version)
            if totals.rate_in or totals.rate_out or moved != self._moved:
                self._moved, self._moved_seq = moved, metrics.seq
            # Quiet for longer than a sparkline is wide: every rate shown is zero, every
            # sparkline flat, no count moved; the rows need not be laid out to know that.
            if metrics.seq - self._moved_seq <= model.SPARK_WIDTH + 1 or not self._figures:
                self._figures = self.screen.figures()
        v = self.view
        message = bool(v.message) and now - v.message_at < MESSAGE_SECONDS
        return (self.app.store.version, self._figures, v.log_seen, message,
                int(now) if v.detail else 0)

    async def _ticker(self) -> None:
        stop = getattr(self.app, "stop_requested", None)
        while True:
            await asyncio.sleep(TICK)
            if stop is not None and stop.is_set():
                self.application.exit()
                return
            self.view.pump()
            seen = self._signature()
            if seen != self._seen or self._asked:
                self._seen, self._asked = seen, False
                self.application.invalidate()

    def run(self) -> None:
        """Show the view until ``q``/Ctrl-C or a stop request; returns then."""

        def pre_run() -> None:
            self.application.create_background_task(self._ticker())

        try:
            self.application.run(pre_run=pre_run, handle_sigint=False)
        finally:
            if self.freeze_gc:  # a frame that failed half-way did not
                gc.enable()
                sys.setswitchinterval(self._switch)
            self.view.close()
