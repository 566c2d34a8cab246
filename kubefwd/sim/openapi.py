"""Just enough OpenAPI for kubectl: a PATCH operation per kind, with its ``fieldValidation``.

kubectl (1.25+) asks the server whether it validates fields itself by looking for the
``fieldValidation`` query parameter on the kind's PATCH operation: in the OpenAPI v3 documents
(kubectl 1.29+) or in the protobuf OpenAPI v2 document (older kubectl). Finding it, kubectl
skips client-side schema validation; finding no schemas, it computes ``apply`` patches from its
built-in types. So these documents hold operations but no schemas.
"""

from __future__ import annotations

from kubefwd.sim.store import RESOURCES, Obj, ResourceInfo

V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"  # as asked for
V2_PROTOBUF_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # as answered
V3_HASH = "6b756265667764"  # constant: the documents never change


def _patch_path(r: ResourceInfo) -> str:
    prefix = "/api/v1" if not r.group else f"/apis/{r.api_version}"
    scope = "/namespaces/{namespace}" if r.namespaced else ""
    return f"{prefix}{scope}/{r.plural}/{{name}}"


def v3_root(group_versions: dict[str, str]) -> Obj:
    """``/openapi/v3``: where each group/version document lives."""
    return {"paths": {key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={V3_HASH}"}
                      for key in group_versions}}


def v3_document(group_version: str, version: str) -> Obj:
    paths: Obj = {}
    for r in RESOURCES:
        if r.api_version != group_version:
            continue
        # No strategic-merge request body: kubectl then builds apply patches from its
        # built-in types instead of looking for schemas we do not have.
        paths[_patch_path(r)] = {"patch": {
            "operationId": f"patch{r.kind}",
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version,
                                                "kind": r.kind},
        }}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": version},
            "paths": paths, "components": {"schemas": {}}}


def v2_document(version: str) -> Obj:
    """The OpenAPI v2 document as JSON (the same content as the protobuf form)."""
    paths: Obj = {}
    for r in RESOURCES:
        paths[_patch_path(r)] = {"patch": {
            "operationId": f"patch{r.kind}",
            "parameters": [{"name": "fieldValidation", "in": "query", "type": "string"}],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version,
                                                "kind": r.kind},
        }}
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": version},
            "paths": paths}


# -- protobuf (the gnostic openapi_v2 messages), written by hand: a few fields suffice ---------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (strings and embedded messages)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def v2_protobuf(version: str) -> bytes:
    paths = b""
    for r in RESOURCES:
        query_param = _field(2, "query") + _field(4, "fieldValidation") + _field(6, "string")
        # ParametersItem.parameter(1) > Parameter.non_body_parameter(2) >
        # NonBodyParameter.query_parameter_sub_schema(3)
        parameter = _field(1, _field(2, _field(3, query_param)))
        # Responses.response_code(1) = NamedResponseValue{name, ResponseValue.response(1)}
        responses = _field(1, _field(1, "200") + _field(2, _field(1, _field(1, "OK"))))
        gvk_yaml = f'group: "{r.group}"\nkind: {r.kind}\nversion: {r.version}\n'
        # NamedAny{name(1), value(2) = Any{yaml(2)}}
        extension = _field(1, "x-kubernetes-group-version-kind") + _field(2, _field(2, gvk_yaml))
        operation = (_field(5, f"patch{r.kind}") + _field(8, parameter) + _field(9, responses)
                     + _field(13, extension))
        path_item = _field(8, operation)  # PathItem.patch(8)
        paths += _field(2, _field(1, _patch_path(r)) + _field(2, path_item))  # Paths.path(2)
    info = _field(1, "Kubernetes") + _field(2, version)
    return _field(1, "2.0") + _field(2, info) + _field(8, paths)
