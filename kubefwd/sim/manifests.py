"""Manifests in and out: parse YAML/JSON documents, and the merge rules PATCH requests use."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

import yaml

from kubefwd.sim.store import Obj, bad_request

# libyaml's loader when PyYAML has it: ten times faster on big manifest sets.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_documents(text: str | bytes) -> list[Obj]:
    """Every object in a YAML or JSON text (multi-document YAML and ``kind: List`` unpacked).

    Raises StatusError 400 for text that is not YAML/JSON or holds something but objects.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request(f"the body is not UTF-8: {exc}") from exc
    try:
        docs = list(yaml.load_all(text, Loader=_SafeLoader))
    except yaml.YAMLError as exc:
        raise bad_request(f"error converting YAML to JSON: {_one_line(exc)}") from exc
    result: list[Obj] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise bad_request("the object provided is unrecognized (must be a mapping)")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            result.extend(_objects(doc["items"]))
        else:
            result.append(doc)
    return result


def _objects(items: Iterable[Any]) -> list[Obj]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("the object provided is unrecognized (must be a mapping)")
        out.append(item)
    return out


def parse_body(body: bytes, content_type: str) -> Obj:
    """One object from a request body, as the API server decodes it (JSON, or YAML)."""
    if "yaml" in content_type:
        docs = parse_documents(body)
        if len(docs) != 1:
            raise bad_request("expected exactly one object in the request body")
        return docs[0]
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(
            f"couldn't get version/kind; json parse error: {_one_line(exc)}"
        ) from exc
    if not isinstance(obj, dict):
        raise bad_request(
            "couldn't get version/kind; json parse error: json: cannot unmarshal "
            f"{type(obj).__name__} into Go value of type struct"
        )
    return obj


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------------------------------
# Merge patches

def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# Lists that strategic merge patch merges element-wise, by the field that identifies elements.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}


def _merge_key(name: str, items: list[Any]) -> str | None:
    if name == "ports":
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(name)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Enough of Kubernetes' strategic merge patch for what ``kubectl apply`` sends.

    Maps merge recursively (null deletes); known lists of objects merge by their key;
    ``$patch: replace|delete``, ``$retainKeys``, ``$setElementOrder/…`` and
    ``$deleteFromPrimitiveList/…`` directives are honoured; other lists are replaced.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result: Obj = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value or []
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _reorder(field, result[field], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(name: str, current: Any, patch: list[Any]) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch
                if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    key = _merge_key(name, patch + (current if isinstance(current, list) else []))
    if key is None or not all(isinstance(p, dict) for p in patch):
        return copy.deepcopy(patch)
    result: list[Any] = copy.deepcopy(current) if isinstance(current, list) else []
    for item in patch:
        ident = item.get(key)
        index = next((i for i, cur in enumerate(result)
                      if isinstance(cur, dict) and cur.get(key) == ident), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _reorder(name: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(name, items)
    if key is None:
        return items

    def ident(x: Any) -> Any:
        return x.get(key) if isinstance(x, dict) else x

    wanted = [ident(o) for o in order]
    ranked = sorted(
        range(len(items)),
        key=lambda i: (wanted.index(ident(items[i])) if ident(items[i]) in wanted else len(wanted),
                       i),
    )
    return [items[i] for i in ranked]


def json_patch(target: Obj, ops: Any) -> Obj:
    """RFC 6902 for the operations people use with ``kubectl patch --type=json``."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc: Any = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "path" not in op or "op" not in op:
            raise bad_request("invalid json patch operation")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            raise bad_request("json patch path must not be empty")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise bad_request(f"json patch path not found: {op['path']}")
        last = parts[-1]
        kind = op["op"]
        try:
            if kind in ("add", "replace"):
                if isinstance(parent, list):
                    idx = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(idx, op.get("value"))
                    else:
                        parent[idx] = op.get("value")
                else:
                    parent[last] = op.get("value")
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            elif kind == "test":
                pass
            else:
                raise bad_request(f"unsupported json patch operation {kind!r}")
        except (KeyError, IndexError, ValueError) as exc:
            raise bad_request(f"json patch failed at {op['path']}: {exc}") from exc
    if not isinstance(doc, dict):
        raise bad_request("json patch produced a non-object")
    return doc
