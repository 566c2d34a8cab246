"""Host names written for services and headless-service pods."""

from __future__ import annotations

from kubefwd.registry.hostnames import context_label, pod_hostnames, service_hostnames


def test_primary_service_single_context() -> None:
    assert service_hostnames("web", "shop", "kind", primary=True, multi_context=False) == [
        "web",
        "web.shop",
        "web.shop.svc",
        "web.shop.svc.cluster.local",
    ]


def test_primary_with_domain() -> None:
    names = service_hostnames(
        "web", "shop", "kind", domain="example.org", primary=True, multi_context=False
    )
    assert names[:2] == ["web", "web.example.org"]


def test_secondary_namespace_has_no_bare_name_nor_domain() -> None:
    names = service_hostnames(
        "web", "pay", "kind", domain="example.org", primary=False, multi_context=False
    )
    assert names == ["web.pay", "web.pay.svc", "web.pay.svc.cluster.local"]


def test_multi_context_adds_qualified_names() -> None:
    first = service_hostnames("web", "shop", "prod", primary=True, multi_context=True)
    assert first == [
        "web",
        "web.shop",
        "web.shop.svc",
        "web.shop.svc.cluster.local",
        "web.shop.prod",
        "web.shop.svc.prod",
    ]
    second = service_hostnames(
        "web", "shop", "staging", primary=False, multi_context=True, first_context=False
    )
    assert second == ["web.shop.staging", "web.shop.svc.staging"]
    assert not set(first) & set(second)


def test_context_names_become_dns_labels() -> None:
    assert context_label("arn:aws:eks:eu-west-1:123:cluster/Prod") == (
        "arn-aws-eks-eu-west-1-123-cluster-prod"
    )
    assert context_label("admin@kind") == "admin-kind"
    assert context_label("::") == "context"
    assert len(context_label("x" * 100)) == 63


def test_pod_names_for_headless_service() -> None:
    assert pod_hostnames("db-0", "db", "shop", "kind", primary=True, multi_context=False) == [
        "db-0.db",
        "db-0.db.shop",
        "db-0.db.shop.svc",
        "db-0.db.shop.svc.cluster.local",
    ]
    assert pod_hostnames("db-1", "db", "pay", "c2", primary=False, multi_context=True) == [
        "db-1.db.pay",
        "db-1.db.pay.svc",
        "db-1.db.pay.svc.cluster.local",
        "db-1.db.pay.c2",
        "db-1.db.pay.svc.c2",
    ]


def test_no_duplicates_when_namespace_looks_like_suffix() -> None:
    names = service_hostnames("a", "svc", "svc", primary=True, multi_context=True)
    assert len(names) == len(set(names))




def test_a_context_label_never_starts_or_ends_with_a_dash() -> None:
    assert context_label("@kind:") == "kind"
    # Cut at 63 characters right after a separator: the dash goes, the label is shorter.
    assert context_label("a" * 62 + "/cluster") == "a" * 62


def test_pod_names_with_a_domain() -> None:
    assert pod_hostnames("db-0", "db", "shop", "kind", domain="example.test", primary=True,
                         multi_context=False)[:2] == ["db-0.db", "db-0.db.example.test"]
