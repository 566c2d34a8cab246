"""The loop's timers: what wakes it and what does not."""

from __future__ import annotations

import time

from kubefwd.tunnel.loop import Loop


def test_a_cancelled_timer_does_not_wake_the_loop() -> None:
    loop = Loop("test-loop")
    loop.bind_thread()
    try:
        fired: list[str] = []
        loop.call_later(0.02, lambda: fired.append("cancelled")).cancel()
        loop.call_later(0.3, lambda: fired.append("kept"))
        started = time.monotonic()
        loop.run_once(None)  # sleeps until the kept timer, not the cancelled one
        assert time.monotonic() - started >= 0.28
        assert fired == ["kept"]
        assert loop._timers == []
    finally:
        loop.close()
