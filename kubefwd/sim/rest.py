"""REST verbs on the simulated API server's objects: what each request does to the store.

The API server routes a request to a resource; the handlers here check bodies against the
URL (kind, apiVersion, namespace, strict field validation), apply the patch flavours kubectl
sends, delete collections, serve the ``scale`` and ``log`` subresources and word 403s like a
real server. Apart from the server so the HTTP plumbing and the API semantics can each be
read on their own.
"""

from __future__ import annotations

import contextlib
import json
import select
import time
from typing import TYPE_CHECKING, Any

from kubefwd.sim import manifests
from kubefwd.sim.httpconn import Connection, ConnectionClosed, Request, send_json
from kubefwd.sim.store import (
    Filter,
    Obj,
    ResourceInfo,
    StatusError,
    Store,
    bad_request,
    not_found,
)

if TYPE_CHECKING:
    from kubefwd.sim.apiserver import Backend


def verb_of(req: Request, name: str) -> str:
    """The RBAC verb of a request on a resource path."""
    if req.method == "GET":
        if name:
            return "get"
        return "watch" if req.arg("watch") not in ("", "0", "false") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}.get(req.method, "get")


def parse_object(req: Request, info: ResourceInfo, namespace: str) -> Obj:
    """The object in a create or replace request's body, checked against the URL."""
    obj = manifests.parse_body(req.body, req.headers.get("Content-Type", ""))
    if not obj.get("kind"):
        text = req.body[:200].decode(errors="replace")
        raise bad_request(f"Object 'Kind' is missing in '{text}'")
    obj = checked(obj, info, namespace)
    if req.arg("fieldValidation") == "Strict":
        unknown = unknown_fields(obj)
        if unknown:
            raise bad_request(
                f'{info.kind} in version "{info.version}" cannot be handled as a '
                f"{info.kind}: strict decoding error: "
                + ", ".join(f'unknown field "{f}"' for f in unknown)
            )
    return obj


def checked(obj: Obj, info: ResourceInfo, namespace: str) -> Obj:
    """The kind, apiVersion and namespace of a body must match the URL."""
    kind = obj.get("kind")
    if kind != info.kind:
        raise bad_request(
            f"the API version in the data ({obj.get('apiVersion')}) and kind ({kind}) do "
            f"not match the expected {info.api_version} {info.kind}"
        )
    if obj.get("apiVersion") != info.api_version:
        raise bad_request(
            f"the API version in the data ({obj.get('apiVersion')}) does not match the "
            f"expected API version ({info.api_version})"
        )
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if info.namespaced:
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        meta["namespace"] = namespace
    return obj


def patch_object(store: Store, req: Request, info: ResourceInfo, namespace: str, name: str,
                 status: bool, dry_run: bool) -> tuple[int, Obj]:
    """PATCH (strategic, merge, JSON, server-side apply) on one object: code and result."""
    content_type = req.headers.get("Content-Type", "").split(";")[0].strip()
    current = store.get(info.kind, namespace, name)
    if content_type == "application/apply-patch+yaml":
        # Server-side apply, simplified: create when missing, else merge like apply does.
        patch: Any = manifests.parse_body(req.body, "application/yaml")
        if current is None:
            obj = checked(patch, info, namespace)
            (obj.get("metadata") or {})["name"] = name
            return 201, obj if dry_run else store.create(obj)
    else:
        try:
            patch = json.loads(req.body)
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from exc
    if current is None:
        raise not_found(info, name)
    if content_type in ("application/strategic-merge-patch+json",
                        "application/apply-patch+yaml"):
        new = manifests.strategic_merge_patch(current, patch)
    elif content_type == "application/merge-patch+json":
        new = manifests.json_merge_patch(current, patch)
    elif content_type == "application/json-patch+json":
        new = manifests.json_patch(current, patch)
    else:
        raise StatusError(415, "UnsupportedMediaType",
                          "the body of the request was in an unknown format - accepted "
                          "media types include: application/json-patch+json, "
                          "application/merge-patch+json, application/apply-patch+yaml, "
                          "application/strategic-merge-patch+json")
    if not isinstance(new, dict):
        raise bad_request("patch produced a non-object")
    new["kind"] = info.kind
    new["apiVersion"] = info.api_version
    meta = new.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    meta["name"] = name
    if info.namespaced:
        meta["namespace"] = namespace
    # A resourceVersion the patch itself carries is a precondition (replace() answers 409);
    # otherwise the patch applies to whatever is current.
    if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
        meta.pop("resourceVersion", None)
    if dry_run:
        return 200, new
    if status:
        result = store.patch_status(info.kind, namespace, name, new.get("status") or {})
        if result is None:
            raise not_found(info, name)
        return 200, result
    return 200, store.replace(new, keep_status=True)


def delete_collection(backend: Backend, conn: Connection, req: Request,
                      info: ResourceInfo, namespace: str) -> bool:
    """DELETE on a collection: every object its selectors match; answers their list."""
    flt = Filter.parse(info.kind, namespace or None, req.arg("labelSelector"),
                       req.arg("fieldSelector"))
    items, _ = backend.store.list_filtered(flt)
    dry_run = bool(req.arg("dryRun")) or delete_options_dry_run(req.body)
    deleted = []
    for obj in items:
        meta = obj["metadata"]
        if dry_run:
            deleted.append(obj)
            continue
        try:
            deleted.append(backend.delete_object(info.kind, meta.get("namespace", ""),
                                                      meta["name"]))
        except StatusError as err:
            if err.code != 404:  # gone meanwhile: that is what we wanted
                raise
    send_json(conn, 200, {"kind": f"{info.kind}List", "apiVersion": info.api_version,
                          "metadata": {"resourceVersion": backend.store.resource_version},
                          "items": deleted})
    return True


def serve_log(backend: Backend, conn: Connection, req: Request, info: ResourceInfo,
              namespace: str, name: str) -> bool:
    """The ``log`` subresource of a pod, as plain text: ``tailLines``, ``sinceSeconds``, and
    ``follow=true`` (chunked, until the client leaves, the pod goes or the server stops)."""
    if req.method != "GET":
        raise StatusError(405, "MethodNotAllowed",
                          "the server does not allow this method on the requested resource")
    if backend.store.get("Pod", namespace, name, copy_=False) is None:
        raise not_found(info, name)
    tail, since = req.arg("tailLines"), req.arg("sinceSeconds")
    for arg, value in (("tailLines", tail), ("sinceSeconds", since)):
        if value and not value.isdigit():
            raise bad_request(f"{arg}: '{value}' is not a whole number")
    source_of = getattr(backend, "pod_log_source", None)
    container = req.arg("container") or None
    source = source_of(namespace, name, container) if source_of is not None else None
    if source is None:
        text = backend.pod_logs(namespace, name, container)
        lines, cursor = text.splitlines(), 0
    else:
        lines, cursor = source.read(None, time.time() - int(since) if since else None)
    if tail:
        lines = lines[len(lines) - int(tail):] if int(tail) else []
    body = "".join(f"{line}\n" for line in lines).encode()
    if req.arg("follow") != "true" or source is None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return True
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    if body:
        conn.send(b"%x\r\n%s\r\n" % (len(body), body))
    while not conn.dropped.is_set():
        if backend.store.get("Pod", namespace, name, copy_=False) is None or _gone(conn):
            break
        if not source.wait(cursor, 0.5):
            continue
        lines, cursor = source.read(cursor)
        chunk = "".join(f"{line}\n" for line in lines).encode()
        if chunk:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    with contextlib.suppress(ConnectionClosed):
        conn.send(b"0\r\n\r\n")
    return False  # the connection is not reused after a followed log


def _gone(conn: Connection) -> bool:
    """Whether the client of a follow stream left: it sends nothing on it, so anything
    readable is its end of the connection."""
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def scale(store: Store, req: Request, info: ResourceInfo, namespace: str, name: str) -> Obj:
    """The ``scale`` subresource of Deployments and StatefulSets (autoscaling/v1 Scale)."""
    obj = store.get(info.kind, namespace, name, copy_=False)
    if obj is None:
        raise not_found(info, name)
    if req.method in ("PUT", "PATCH"):
        current = _scale_of(obj)
        try:
            body = json.loads(req.body)
        except ValueError as exc:
            raise bad_request(f"error decoding body: {exc}") from exc
        if req.method == "PATCH":
            content_type = req.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type == "application/json-patch+json":
                body = manifests.json_patch(current, body)
            else:
                body = manifests.json_merge_patch(current, body)
        replicas = ((body or {}).get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise StatusError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: '
                              "spec.replicas: Invalid value: must be a non-negative integer")

        def set_replicas(o: Obj) -> None:
            o.setdefault("spec", {})["replicas"] = replicas

        updated = store.update(info.kind, namespace, name, set_replicas)
        if updated is None:
            raise not_found(info, name)
        obj = updated
    elif req.method != "GET":
        raise StatusError(405, "MethodNotAllowed",
                          "the server does not allow this method on the requested resource")
    return _scale_of(obj)


SUBRESOURCES: dict[str, tuple[str, ...]] = {
    "Pod": ("portforward", "status", "log"),
    "Deployment": ("scale", "status"),
    "StatefulSet": ("scale", "status"),
}


_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec", "status"}
_EXTRA_TOP_FIELDS = {"Endpoints": {"subsets"},
                     "EndpointSlice": {"addressType", "endpoints", "ports"}}
_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
}


def unknown_fields(obj: Obj) -> list[str]:
    """Fields a strict decoder would reject (checked at the top level and in metadata only)."""
    allowed = _TOP_FIELDS | _EXTRA_TOP_FIELDS.get(obj.get("kind", ""), set())
    unknown = sorted(k for k in obj if k not in allowed)
    unknown += sorted(f"metadata.{k}" for k in obj.get("metadata") or {} if k not in _META_FIELDS)
    return unknown


def delete_options_dry_run(body: bytes) -> bool:
    """Whether a DELETE's DeleteOptions body asks for a dry run (kubectl sends it there)."""
    if not body.strip():
        return False
    try:
        options = json.loads(body)
    except ValueError as exc:
        raise bad_request(f"error decoding DeleteOptions: {exc}") from exc
    return isinstance(options, dict) and bool(options.get("dryRun"))


def _scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace", ""),
                     "uid": meta.get("uid", ""), "resourceVersion": meta["resourceVersion"],
                     "creationTimestamp": meta.get("creationTimestamp")},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
    }


def forbidden(info: ResourceInfo, resource: str, verb: str, namespace: str,
               name: str) -> StatusError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    target = f'{resource}' + (f' "{name}"' if name else "")
    return StatusError(
        403, "Forbidden",
        f'{target} is forbidden: User "sim-user" cannot {verb} resource "{resource}" in API '
        f'group "{info.group}"{where}',
        details={"name": name, "group": info.group, "kind": resource},
    )
