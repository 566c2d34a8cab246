"""Start-up lists everything at once, yet hands each namespace's services over after its
pods: ``after_synced`` holds a callback's first event until the informers it follows have
delivered their first list or failed; a stop asked for meanwhile drops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kubefwd.app.startup import after_synced
from kubefwd.cluster.informer import SYNC, Informer, InformerEvent


def informer(resource: str) -> Informer:
    return Informer(context="c", namespace="ns", resource=resource,
                    list_fn=lambda: ([], "1"), watch_fn=lambda rv: iter(()),
                    callback=lambda event: None)


@pytest.fixture
def pods_and_slices() -> Iterator[tuple[Informer, Informer]]:
    yield informer("pods"), informer("endpointslices")  # never started: set by hand


def deliver(callback: object, event: InformerEvent) -> threading.Thread:
    thread = threading.Thread(target=callback, args=(event,),  # type: ignore[arg-type]
                              name="test-informer")
    thread.start()
    return thread


def test_the_first_event_waits_for_every_informer_it_follows(
    pods_and_slices: tuple[Informer, Informer],
) -> None:
    pods, slices = pods_and_slices
    got: list[InformerEvent] = []
    gated = after_synced(got.append, [pods, slices], threading.Event())
    event = InformerEvent(SYNC, objects=({"metadata": {"name": "web"}},))
    thread = deliver(gated, event)
    thread.join(0.2)
    assert thread.is_alive() and not got
    slices.synced.set()
    thread.join(0.2)
    assert thread.is_alive() and not got  # the pods are not listed yet
    pods.synced.set()
    thread.join(5)
    assert got == [event]
    later = InformerEvent("ADDED", obj={"metadata": {"name": "api"}})
    gated(later)  # from then on, at once
    assert got == [event, later]


def test_a_failed_informer_counts_as_done_and_a_stop_drops_the_event(
    pods_and_slices: tuple[Informer, Informer],
) -> None:
    pods, slices = pods_and_slices
    got: list[InformerEvent] = []
    stop = threading.Event()
    event = InformerEvent(SYNC)
    pods.failed.set()
    thread = deliver(after_synced(got.append, [pods, slices], stop), event)
    thread.join(0.2)
    assert thread.is_alive()  # the slices are still to come
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and got == []
    slices.synced.set()
    after_synced(got.append, [pods, slices], threading.Event())(event)
    assert got == [event]
