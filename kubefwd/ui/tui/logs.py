"""The Logs tab: a pod's log through the API, its last lines then followed, on a thread.

The stream is asked for with ``tail_lines=100, follow=True`` and the follower's stop Event,
so closing the tab or the view ends the request promptly. ``lines`` keeps the last 1000;
``received`` counts every line, and ``frozen_at`` (set by the view when the user scrolls up)
is where the shown window ends, so new lines do not move what the user is reading.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from kubefwd.support.threads import StoppableThread

KEEP = 1000
TAIL = 100


class PodLogFollower(StoppableThread):
    def __init__(self, lookups: Any, ref: tuple[str, str, str] | None,
                 invalidate: Callable[[], None]) -> None:
        super().__init__("kubefwd/tui-pod-log")
        self.lookups = lookups
        self.ref = ref
        self.invalidate = invalidate
        self.lines: collections.deque[str] = collections.deque(maxlen=KEEP)
        self.received = 0
        self.frozen_at: int | None = None
        self.status = "loading…"

    def run_loop(self) -> None:
        if self.lookups is None:
            self.status = "pod logs are not available"
            self.invalidate()
            return
        if self.ref is None:
            self.status = "no pod: nothing to show"
            self.invalidate()
            return
        context, namespace, pod = self.ref
        self.status = f"following {namespace}/{pod}"
        self.invalidate()
        try:
            for line in self.lookups.pod_logs(namespace, pod, context=context,
                                              tail_lines=TAIL, follow=True,
                                              stop=self.stopping):
                self.lines.append(line)
                self.received += 1
                self.invalidate()
                if self.stopping.is_set():
                    return
        except Exception as exc:
            self.status = f"log of {namespace}/{pod}: {exc}"
        else:
            if not self.stopping.is_set():
                self.status = f"log of {namespace}/{pod} ended"
        self.invalidate()

    def window(self, height: int) -> list[str]:
        """The ``height`` lines to show: the newest, or those up to ``frozen_at``."""
        lines = list(self.lines)
        end = len(lines)
        if self.frozen_at is not None:
            dropped = self.received - len(lines)
            end = max(0, min(len(lines), self.frozen_at - dropped))
        return lines[max(0, end - height):end]
