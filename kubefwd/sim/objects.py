"""The API's vocabulary: kinds and how they are served, Status errors, names, selectors."""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubefwd.support.dnsnames import is_dns_label, is_dns_subdomain
from kubefwd.support.selectorsyntax import split_requirements

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceInfo:
    """How one kind is served: its REST name, group/version, scope and discovery facts."""

    kind: str
    plural: str
    singular: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods`` or ``deployments.apps``, as Status messages name resources."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[ResourceInfo, ...] = (
    ResourceInfo("Namespace", "namespaces", "namespace", "", "v1", False, ("ns",)),
    ResourceInfo("Service", "services", "service", "", "v1", True, ("svc",), ("all",)),
    ResourceInfo("Pod", "pods", "pod", "", "v1", True, ("po",), ("all",)),
    ResourceInfo("Endpoints", "endpoints", "endpoints", "", "v1", True, ("ep",)),
    ResourceInfo("Event", "events", "event", "", "v1", True, ("ev",)),
    ResourceInfo(
        "EndpointSlice", "endpointslices", "endpointslice", "discovery.k8s.io", "v1", True
    ),
    ResourceInfo("Deployment", "deployments", "deployment", "apps", "v1", True, ("deploy",),
                 ("all",)),
    ResourceInfo("StatefulSet", "statefulsets", "statefulset", "apps", "v1", True, ("sts",),
                 ("all",)),
)
BY_KIND: dict[str, ResourceInfo] = {r.kind: r for r in RESOURCES}


class StatusError(Exception):
    """An API error, rendered as a ``Status`` object like a real API server's."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def to_status(self) -> Obj:
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def not_found(info: ResourceInfo, name: str) -> StatusError:
    return StatusError(
        404, "NotFound", f'{info.qualified} "{name}" not found',
        details={"name": name, "group": info.group, "kind": info.plural},
    )


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def invalid(kind: str, name: str, field_path: str, value: Any, detail: str) -> StatusError:
    cause = f"Invalid value: {_quote(value)}: {detail}"
    return StatusError(
        422, "Invalid", f'{kind} "{name}" is invalid: {field_path}: {cause}',
        details={
            "name": name, "group": BY_KIND[kind].group if kind in BY_KIND else "", "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": cause, "field": field_path}],
        },
    )


def check_shape(obj: Obj) -> None:
    """``spec`` and ``status`` must be objects, as the typed decoder of a real server insists."""
    for key in ("spec", "status"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], dict):
            raise bad_request(
                f"{obj.get('kind')} in version \"{obj.get('apiVersion', '')}\" cannot be "
                f"handled as a {obj.get('kind')}: json: cannot unmarshal {type(obj[key]).__name__}"
                f" into Go struct field {obj.get('kind')}.{key}"
            )


def check_metadata(kind: str, meta: Obj) -> None:
    """Labels and annotations must be string maps; labels must be valid label values."""
    name = str(meta.get("name") or meta.get("generateName") or "")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise invalid(kind, name, f"metadata.{key}", value, "must be a map of strings")
    for k, v in (meta.get("labels") or {}).items():
        if not _LABEL_KEY.match(k) or len(k.split("/")[-1]) > 63:
            raise invalid(kind, name, "metadata.labels", k, "name part must consist of "
                          "alphanumeric characters, '-', '_' or '.'")
        if len(v) > 63 or not _LABEL_VALUE.match(v):
            raise invalid(kind, name, "metadata.labels", v, "a valid label must be an empty "
                          "string or consist of alphanumeric characters, '-', '_' or '.'")


def _quote(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Names

_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` is not a valid name for ``kind``, or None (the API server's wording)."""
    if kind in ("Namespace",):
        if not is_dns_label(name):
            return (
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character (e.g. 'my-name',"
                "  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
    elif kind == "Service":
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            return (
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character "
                "(e.g. 'my-name',  or 'abc-123', regex used for validation is "
                "'[a-z]([-a-z0-9]*[a-z0-9])?')"
            )
    elif not is_dns_subdomain(name):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?"
            "(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Selectors

@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return self.key in labels and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label, as in Kubernetes.
        return labels.get(self.key) not in self.values


_LABEL_KEY = re.compile(r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?"
                        r"[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def parse_label_selector(selector: str) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k``; raises StatusError 400."""
    selector = selector.strip()
    if not selector:
        return []
    result = []
    for term in split_requirements(selector):
        req = _parse_term(term)
        if not _LABEL_KEY.match(req.key) or any(not _LABEL_VALUE.match(v) for v in req.values):
            raise bad_request(f"unable to parse requirement: invalid label selector {term!r}")
        result.append(req)
    return result


def _parse_term(term: str) -> Requirement:
    m = re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", term)
    if m:
        values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
        return Requirement(m.group(1), m.group(2), values)
    for op, norm in (("==", "="), ("!=", "!="), ("=", "=")):
        if op in term:
            key, _, value = term.partition(op)
            return Requirement(key.strip(), norm, (value.strip(),))
    if term.startswith("!"):
        return Requirement(term[1:].strip(), "!exists")
    if term and not re.search(r"[\s()]", term):
        return Requirement(term, "exists")
    raise bad_request(f"unable to parse requirement: found '{term}', expected: identifier")


def selector_from_match_labels(match_labels: dict[str, str]) -> list[Requirement]:
    return [Requirement(k, "=", (v,)) for k, v in sorted(match_labels.items())]


def labels_match(requirements: Iterable[Requirement], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in requirements)


_FIELDS: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "status.phase": ("status", "phase"),
    "spec.nodeName": ("spec", "nodeName"),
}


def parse_field_selector(kind: str, selector: str) -> list[tuple[str, str, str]]:
    """Parse ``metadata.name=x,status.phase!=Running`` into (field, op, value) triples."""
    selector = selector.strip()
    if not selector:
        return []
    allowed = {"metadata.name", "metadata.namespace"}
    if kind == "Pod":
        allowed |= {"status.phase", "spec.nodeName"}
    result = []
    for term in selector.split(","):
        term = term.strip()
        match = re.match(r"^([^=!]+)(==|!=|=)(.*)$", term)
        if not match:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        key, op, value = match.group(1).strip(), match.group(2), match.group(3)
        norm = "!=" if op == "!=" else "="
        if key not in allowed:
            raise bad_request(
                f'field label not supported: {key}'
            )
        result.append((key, norm, value.strip()))
    return result


def fields_match(terms: Iterable[tuple[str, str, str]], obj: Obj) -> bool:
    for key, op, value in terms:
        a, b = _FIELDS[key]
        actual = (obj.get(a) or {}).get(b) or ""
        if (actual == value) != (op == "="):
            return False
    return True


@dataclass(frozen=True)
class Filter:
    """What a list or watch asks for: a kind, a namespace (None: all) and selectors."""

    kind: str
    namespace: str | None = None
    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, kind: str, namespace: str | None, label_selector: str = "",
              field_selector: str = "") -> Filter:
        return cls(kind, namespace or None, tuple(parse_label_selector(label_selector)),
                   tuple(parse_field_selector(kind, field_selector)))

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, meta.get("labels")) and fields_match(self.fields, obj)


_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(n: int) -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(n))
