"""A namespace's third octet (127.x.[27+n].y) is its own for the whole run: a namespace that
goes away keeps it, so no other namespace gets addresses clients may still have cached for
the old one's names, and a namespace that comes back gets its addresses back."""

from __future__ import annotations

from test_registry import make, service, sync, upserts

from kubefwd.registry.model import ForwardUpsert


def third_octets(ups: dict[str, ForwardUpsert]) -> dict[str, int]:
    return {key: int(u.ip.split(".")[2]) for key, u in ups.items()}


def test_octet_of_a_deleted_namespace_is_not_handed_to_a_new_one() -> None:
    reg, rec = make(namespaces=())  # -A: namespaces come and go
    sync(reg, "services", [service("web", "preview-1"), service("api", "prod")], ns="")
    first = third_octets(upserts(rec.take()))
    assert first["sim/preview-1/web"] != first["sim/prod/api"]
    # preview-1 is deleted; preview-2 appears: a new octet, not preview-1's.
    sync(reg, "services", [service("api", "prod")], ns="")
    rec.take()
    sync(reg, "services", [service("api", "prod"), service("web", "preview-2")], ns="")
    second = third_octets(upserts(rec.take()))
    assert second["sim/preview-2/web"] not in (first["sim/preview-1/web"],
                                               first["sim/prod/api"])
    # preview-1 comes back: its own octet again.
    sync(reg, "services", [service("api", "prod"), service("web", "preview-2"),
                           service("web", "preview-1")], ns="")
    third = third_octets(upserts(rec.take()))
    assert third["sim/preview-1/web"] == first["sim/preview-1/web"]


def test_octet_is_kept_while_a_namespace_has_no_service() -> None:
    reg, rec = make(namespaces=("a", "b"))
    sync(reg, "services", [service("web", "b")], ns="b")
    b_octet = third_octets(upserts(rec.take()))["sim/b/web"]
    sync(reg, "services", [], ns="b")
    sync(reg, "services", [service("web", "a")], ns="a")
    sync(reg, "services", [service("web", "b")], ns="b")
    octets = third_octets(upserts(rec.take()))
    assert octets["sim/b/web"] == b_octet and octets["sim/a/web"] != b_octet
