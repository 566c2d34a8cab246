"""IP allocation: deterministic ranges, reservations, stability, exhaustion."""

from __future__ import annotations

import logging
import threading

import pytest

from kubefwd.errors import UsageError
from kubefwd.registry.ipalloc import AddressesExhausted, IpAllocator, validate_reservations


def test_ranges_follow_cluster_and_namespace_index() -> None:
    alloc = IpAllocator()
    assert alloc.allocate("a", 0, 0, ["a"]) == "127.1.27.1"
    assert alloc.allocate("b", 0, 0, ["b"]) == "127.1.27.2"
    assert alloc.allocate("c", 0, 1, ["c"]) == "127.1.28.1"
    assert alloc.allocate("d", 1, 0, ["d"]) == "127.2.27.1"
    assert alloc.allocate("e", 2, 3, ["e"]) == "127.3.30.1"


def test_same_key_keeps_its_ip_until_released() -> None:
    alloc = IpAllocator()
    first = alloc.allocate(("ctx", "ns", "web"), 0, 0, ["web"])
    alloc.allocate(("ctx", "ns", "db"), 0, 0, ["db"])
    assert alloc.allocate(("ctx", "ns", "web"), 0, 0, ["web"]) == first
    assert alloc.ip_of(("ctx", "ns", "web")) == first
    alloc.release(("ctx", "ns", "web"))
    assert alloc.ip_of(("ctx", "ns", "web")) is None
    # the lowest free address is reused deterministically
    assert alloc.allocate(("ctx", "ns", "new"), 0, 0, ["new"]) == first


def test_release_by_ip_and_short_form() -> None:
    alloc = IpAllocator()
    ip = alloc.allocate(0, 0, ["web", "web.ns"])
    assert alloc.allocate(0, 0, ["web", "web.ns"]) == ip
    alloc.release(ip)
    assert alloc.in_use() == {}
    alloc.release("never-held")  # harmless


def test_reservation_by_any_name_and_never_given_to_others() -> None:
    alloc = IpAllocator(reservations={"db.shop": "127.1.27.1", "cache": "127.9.9.9"})
    # 127.1.27.1 is reserved: the first ordinary service skips it
    assert alloc.allocate("web", 0, 0, ["web", "web.shop"]) == "127.1.27.2"
    assert alloc.allocate("db", 0, 0, ["db", "db.shop", "db.shop.svc"]) == "127.1.27.1"
    assert alloc.allocate("cache", 0, 1, ["cache.pay", "cache"]) == "127.9.9.9"
    # exact match only
    assert alloc.allocate("x", 0, 0, ["cache2"]) == "127.1.27.3"


def test_reservation_taken_falls_back_to_dynamic() -> None:
    alloc = IpAllocator(reservations={"web.ns.svc.cluster.local": "127.5.5.5"})
    names = ["web.ns", "web.ns.svc.cluster.local"]
    assert alloc.allocate("ctx1", 0, 0, names) == "127.5.5.5"
    assert alloc.allocate("ctx2", 1, 0, names) == "127.2.27.1"


def test_base_shifts_ranges() -> None:
    alloc = IpAllocator(base="127.1.28.1")
    assert alloc.allocate("a", 0, 0, ["a"]) == "127.1.28.1"
    assert alloc.allocate("b", 0, 1, ["b"]) == "127.1.29.1"
    alloc = IpAllocator(base="127.2.27.10")
    assert alloc.allocate("a", 1, 0, ["a"]) == "127.3.27.10"


@pytest.mark.parametrize(
    "reservations, message",
    [
        ({"web": "10.0.0.1"}, "outside the loopback range"),
        ({"web": "127.1.1"}, "not an IPv4 address"),
        ({"web": "banana"}, "not an IPv4 address"),
        ({"web": "::1"}, "not an IPv4 address"),
        ({"web": "127.0.0.0"}, "not a usable host address"),
        ({"web": "127.1.27.5", "db": "127.1.27.5"}, "duplicates web:127.1.27.5"),
        ({" ": "127.1.27.5"}, "empty service name"),
        ({"web": "127.1.27.5", "WEB": "127.1.27.6"}, "given twice"),
    ],
)
def test_bad_reservations_are_usage_errors(reservations: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        IpAllocator(reservations=reservations)


def test_bad_base_is_usage_error() -> None:
    with pytest.raises(UsageError, match="base IP"):
        IpAllocator(base="192.168.0.1")


def test_validate_reservations_normalises() -> None:
    assert validate_reservations({" Web ": " 127.1.27.9 "}) == {"web": "127.1.27.9"}
    alloc = IpAllocator(reservations={"DB": "127.1.27.9"})
    assert alloc.allocate("k", 0, 0, ["db"]) == "127.1.27.9"


def test_exhaustion_names_the_namespace_and_never_uses_0_or_255() -> None:
    alloc = IpAllocator()
    ips = {alloc.allocate(i, 0, 0, [f"s{i}"], namespace="shop") for i in range(254)}
    assert len(ips) == 254
    assert "127.1.27.0" not in ips and "127.1.27.255" not in ips
    with pytest.raises(AddressesExhausted, match="namespace shop"):
        alloc.allocate(999, 0, 0, ["s999"], namespace="shop")
    # other namespaces are unaffected
    assert alloc.allocate(1000, 0, 1, ["other"]) == "127.1.28.1"


def test_namespace_index_beyond_range_is_exhaustion() -> None:
    with pytest.raises(AddressesExhausted, match="namespace far"):
        IpAllocator().allocate("k", 0, 300, ["x"], namespace="far")


def test_concurrent_allocations_are_unique() -> None:
    alloc = IpAllocator()
    results: list[str] = []
    lock = threading.Lock()

    def work(start: int) -> None:
        for i in range(start, start + 50):
            ip = alloc.allocate(i, 0, i % 3, [f"s{i}"])
            with lock:
                results.append(ip)

    threads = [threading.Thread(target=work, args=(k * 50,), name=f"alloc-{k}") for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 == len(set(results))


def test_addresses_another_instance_holds_are_skipped() -> None:
    held = {"127.1.27.1", "127.1.27.3"}
    asked: list[str] = []

    def taken(ip: str) -> bool:
        asked.append(ip)
        return ip in held

    alloc = IpAllocator(taken=taken)
    assert alloc.allocate("a", 0, 0, ["a"]) == "127.1.27.2"
    assert alloc.allocate("b", 0, 0, ["b"]) == "127.1.27.4"
    held.clear()  # the other instance stopped: its addresses are free again
    assert alloc.allocate("c", 0, 0, ["c"]) == "127.1.27.1"
    assert "127.1.27.1" in asked


def test_a_reservation_another_instance_holds_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("kubefwd.registry.ipalloc")
    logger.addHandler(caplog.handler)  # whatever another test did to propagation
    try:
        alloc = IpAllocator(reservations={"web": "127.1.27.9"},
                            taken=lambda ip: ip == "127.1.27.9")
        assert alloc.allocate("web", 0, 0, ["web"]) == "127.1.27.1"
    finally:
        logger.removeHandler(caplog.handler)
    assert "127.1.27.9 for web is already used by another kubefwd" in caplog.text


def test_move_blocks_the_address_and_keeps_the_range() -> None:
    alloc = IpAllocator()
    first = alloc.allocate("a", 0, 1, ["a"])
    alloc.allocate("b", 0, 1, ["b"])
    assert first == "127.1.28.1"
    moved = alloc.move("a")
    assert moved == "127.1.28.3" and alloc.ip_of("a") == moved
    # The address found in use is never handed out again, even when nobody holds it here.
    alloc.release("a")
    assert alloc.allocate("c", 0, 1, ["c"]) == "127.1.28.3"
    assert alloc.allocate("d", 0, 1, ["d"]) == "127.1.28.4"
    assert "127.1.28.1" not in alloc.in_use()
    alloc.block("127.1.28.5")
    assert alloc.allocate("e", 0, 1, ["e"]) == "127.1.28.6"
    with pytest.raises(KeyError):
        alloc.move("never-allocated")


def test_a_move_with_nowhere_to_go_keeps_the_old_address_for_a_later_try() -> None:
    alloc = IpAllocator(base="127.1.27.253")
    assert alloc.allocate("a", 0, 0, ["a"]) == "127.1.27.253"
    assert alloc.allocate("b", 0, 0, ["b"]) == "127.1.27.254"
    with pytest.raises(AddressesExhausted):
        alloc.move("a")
    # Still "a"'s: not handed to anyone else, and a later move may try again.
    assert alloc.ip_of("a") == "127.1.27.253"
    with pytest.raises(AddressesExhausted):
        alloc.allocate("c", 0, 0, ["c"])
    alloc.release("b")
    assert alloc.move("a") == "127.1.27.254"


def test_allocate_is_called_with_a_key_or_names_and_int_indices() -> None:
    alloc = IpAllocator()
    with pytest.raises(TypeError, match=r"^allocate\(key, cluster_index, namespace_index, "
                                        r"names\)$"):
        alloc.allocate(0, ["x"])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^cluster_index and namespace_index must be int$"):
        alloc.allocate("k", 0, "1", ["x"])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^cluster_index and namespace_index must be int$"):
        alloc.allocate("k", "0", 1, ["x"])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^names must be a sequence of names$"):
        alloc.allocate("k", 0, 0, "web")
    with pytest.raises(TypeError, match=r"^names must be a sequence of names$"):
        alloc.allocate("k", 0, 0, {"web"})  # type: ignore[call-overload]
    # The short form keys by the names: other names, another address.
    assert alloc.allocate(0, 0, ["a"]) == alloc.allocate(0, 0, ["a"]) == "127.1.27.1"
    assert alloc.allocate(0, 0, ["b"]) == "127.1.27.2"
    assert alloc.allocate(0, 1, ["a"]) == "127.1.28.1"


def test_a_reserved_address_asked_for_again_by_its_holder_is_no_conflict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alloc = IpAllocator(reservations={"web": "127.1.27.9"})
    with caplog.at_level(logging.WARNING):
        assert alloc.allocate("k", 0, 0, ["web"]) == "127.1.27.9"
        assert alloc.allocate("k", 0, 0, ["web"]) == "127.1.27.9"
        assert alloc.allocate("other", 0, 0, ["web"]) == "127.1.27.1"
    assert [r.getMessage() for r in caplog.records] == [
        "reserved IP 127.1.27.9 for web is already used by another service; allocating a new one"]
    assert alloc.is_reserved("127.1.27.9") and not alloc.is_reserved("127.1.27.1")


def test_exhaustion_messages_name_the_range() -> None:
    alloc = IpAllocator(base="127.255.254.250")
    assert alloc.allocate("a", 0, 1, ["a"]) == "127.255.255.250"  # the last range still works
    with pytest.raises(AddressesExhausted) as info:
        alloc.allocate("b", 1, 0, ["b"], namespace="shop")
    assert str(info.value) == ("no loopback range left for namespace shop (cluster 1): "
                               "127.256.254.x does not exist")
    with pytest.raises(AddressesExhausted) as info:
        alloc.allocate("c", 0, 2, ["c"])
    assert str(info.value) == ("no loopback range left for namespace #2 (cluster 0): "
                               "127.255.256.x does not exist")
    for n in range(5):
        alloc.allocate(f"d{n}", 0, 0, [f"d{n}"])
    with pytest.raises(AddressesExhausted) as info:
        alloc.allocate("e", 0, 0, ["e"])
    assert str(info.value) == ("no free loopback address left for namespace #0: "
                               "127.255.254.250-254 are all in use")


def test_move_out_of_a_full_range_names_it() -> None:
    alloc = IpAllocator(base="127.1.27.253")
    alloc.allocate("a", 0, 0, ["a"])
    alloc.allocate("b", 0, 0, ["b"])
    with pytest.raises(AddressesExhausted) as info:
        alloc.move("a")
    assert str(info.value) == ("no free loopback address left for namespace 127.1.27.x: "
                               "127.1.27.253-254 are all in use")
    # Nowhere to go: "a" keeps its address for a later try (never handed to another).
    assert alloc.ip_of("a") == "127.1.27.253" and "127.1.27.253" in alloc.in_use()
    with pytest.raises(AddressesExhausted, match="namespace shop:"):
        alloc.move("b", namespace="shop")
    with pytest.raises(KeyError) as missing:
        alloc.move("never")
    assert missing.value.args == ("never",)


def test_release_by_ip_frees_the_key_too() -> None:
    alloc = IpAllocator()
    ip = alloc.allocate("a", 0, 0, ["a"])
    alloc.release(ip)
    assert alloc.ip_of("a") is None and alloc.in_use() == {}
    assert alloc.allocate("b", 0, 0, ["b"]) == ip
    alloc.release("b")
    assert alloc.in_use() == {}
    alloc.release("127.1.27.77")  # not held: nothing to do
    alloc.release(None)


def test_a_bad_reservation_or_base_says_which() -> None:
    with pytest.raises(UsageError) as info:
        IpAllocator(reservations={"web": "10.0.0.1"})
    assert str(info.value) == "reservation web: 10.0.0.1 is outside the loopback range 127.0.0.0/8"
    with pytest.raises(UsageError) as info:
        IpAllocator(base="x")
    assert str(info.value) == "base IP: 'x' is not an IPv4 address"


def test_a_reserved_address_found_in_use_moves_to_the_first_free_one() -> None:
    alloc = IpAllocator(reservations={"web": "127.1.27.9"})
    assert alloc.allocate("k", 0, 0, ["web"]) == "127.1.27.9"
    assert alloc.move("k") == "127.1.27.1"


def test_each_address_is_the_lowest_free_one_after_any_sequence() -> None:
    # The scan starts past the addresses already handed out; releases (by key or by IP),
    # blocked and reserved ones and moves never make it skip a free lower address.
    alloc = IpAllocator(reservations={"r": "127.1.27.4"})
    held: dict[str, str] = {}
    reserved = {"127.1.27.4"}

    def lowest_free() -> str:
        used = set(held.values()) | reserved | blocked
        return next(f"127.1.27.{n}" for n in range(1, 255) if f"127.1.27.{n}" not in used)

    blocked: set[str] = set()
    steps = ["a", "b", "c", "d", "-b", "e", "f", "-a", "-e", "g", "h", "block", "i",
             "-ip:c", "j", "move:d", "k", "l"]
    for step in steps:
        if step.startswith("-ip:"):
            alloc.release(held.pop(step[4:]))
        elif step.startswith("-"):
            alloc.release(step[1:])
            del held[step[1:]]
        elif step == "block":
            ip = lowest_free()
            alloc.block(ip)
            blocked.add(ip)
        elif step.startswith("move:"):
            key = step[5:]
            blocked.add(held[key])
            del held[key]
            held[key] = expected = lowest_free()
            assert alloc.move(key) == expected
        else:
            expected = lowest_free()
            held[step] = alloc.allocate(step, 0, 0, [step])
            assert held[step] == expected, step
    assert alloc.in_use() == {ip: key for key, ip in held.items()}


def test_an_address_held_elsewhere_is_asked_about_again() -> None:
    # Another instance's address is skipped while it holds it, and handed out once it no
    # longer does: the scan never starts past an address that was only taken elsewhere.
    others = {"127.1.27.1", "127.1.27.3"}
    alloc = IpAllocator(taken=others.__contains__)
    assert alloc.allocate("a", 0, 0, ["a"]) == "127.1.27.2"
    assert alloc.allocate("b", 0, 0, ["b"]) == "127.1.27.4"
    others.clear()
    assert alloc.allocate("c", 0, 0, ["c"]) == "127.1.27.1"
    assert alloc.allocate("d", 0, 0, ["d"]) == "127.1.27.3"
    assert alloc.allocate("e", 0, 0, ["e"]) == "127.1.27.5"


def test_an_address_released_during_a_scan_is_not_skipped_later() -> None:
    # ``taken`` is asked outside the allocator's lock: a release that lands meanwhile
    # must leave the freed lower address to the next allocation.
    done: list[str] = []

    def release_during(ip: str) -> bool:
        if ip == "127.1.27.4" and not done:
            done.append(ip)
            alloc.release("a")  # frees 127.1.27.1 while "d" is being placed
        return False

    alloc = IpAllocator(taken=release_during)
    for key in "abc":
        alloc.allocate(key, 0, 0, [key])
    assert alloc.allocate("d", 0, 0, ["d"]) == "127.1.27.4"
    assert alloc.allocate("e", 0, 0, ["e"]) == "127.1.27.1"
    assert alloc.allocate("f", 0, 0, ["f"]) == "127.1.27.5"
