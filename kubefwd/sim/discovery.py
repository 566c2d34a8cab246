"""Discovery documents: what kubectl reads to learn the kinds, short names and verbs."""

from __future__ import annotations

from kubefwd.sim.store import RESOURCES, Obj

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
GROUP_VERSIONS = {"apps": "v1", "discovery.k8s.io": "v1"}


def version_info(version: str) -> Obj:
    """``/version``: kubectl's dispatcher picks its binary by ``gitVersion``."""
    major, minor = version.lstrip("v").split(".")[:2]
    return {
        "major": major, "minor": minor, "gitVersion": version,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2024-08-13T07:28:49Z", "goVersion": "go1.22.5", "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_group(group: str, version: str) -> Obj:
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def group_list() -> Obj:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [api_group(g, v) for g, v in GROUP_VERSIONS.items()]}


def resource_list(group_version: str) -> Obj:
    resources: list[Obj] = []
    for r in RESOURCES:
        if r.api_version != group_version:
            continue
        entry: Obj = {
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ALL_VERBS,
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        if r.kind in ("Deployment", "StatefulSet"):
            resources.append({"name": f"{r.plural}/scale", "singularName": "",
                              "namespaced": True, "group": "autoscaling", "version": "v1",
                              "kind": "Scale", "verbs": ["get", "patch", "update"]})
            resources.append({"name": f"{r.plural}/status", "singularName": "",
                              "namespaced": True, "kind": r.kind,
                              "verbs": ["get", "patch", "update"]})
        if r.kind == "Pod":
            resources.append({"name": "pods/portforward", "singularName": "",
                              "namespaced": True, "kind": "PodPortForwardOptions",
                              "verbs": ["create", "get"]})
            resources.append({"name": "pods/log", "singularName": "", "namespaced": True,
                              "kind": "Pod", "verbs": ["get"]})
            resources.append({"name": "pods/status", "singularName": "", "namespaced": True,
                              "kind": "Pod", "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}
