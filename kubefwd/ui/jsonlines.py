"""``--output json``: one JSON object per event, one per line, on stdout.

The schema is the events' own (``kubefwd.events.types``): every object has a ``type`` and a
``time`` (ISO-8601 UTC), then the event's fields by name. Lines are written as events arrive
and flushed at once, so a script can read them while kubefwd runs (``jq``, a test waiting for
``ready``). Events carry names, addresses, ports and messages, never a credential.
"""

from __future__ import annotations

import json
from typing import TextIO

from kubefwd.events.bus import EventBus, Subscription
from kubefwd.events.types import Event, to_json
from kubefwd.support.threads import StoppableThread
from kubefwd.ui.text import silence


class JsonLines(StoppableThread):
    """Writes every event of ``bus`` as a JSON line on ``stream`` from a thread of its own
    (debug log lines are published only with -v, so they appear only then)."""

    def __init__(self, bus: EventBus, stream: TextIO) -> None:
        super().__init__("kubefwd/json-log")
        self.stream = stream
        self.broken = False
        self._sub: Subscription = bus.subscribe("json output", maxsize=100_000)

    def run_loop(self) -> None:
        while True:
            event = self._sub.get(timeout=None)
            if event is None:
                return  # closed and emptied
            self.write(event)

    def write(self, event: Event) -> None:
        if self.broken:
            return
        record = to_json(event)
        try:
            self.stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"))
                              + "\n")
            self.stream.flush()
        except OSError:
            self.broken = True
            silence(self.stream)

    def on_stop(self) -> None:
        self._sub.close()

    def finish(self, timeout: float = 5.0) -> None:
        """Write everything published so far, then stop."""
        self.stop_and_join(timeout)
