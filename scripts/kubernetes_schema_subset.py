"""Cut the Kubernetes schemas that tests/test_kubernetes.py checks manifests against.

The test validates offline, with jsonschema, against Kubernetes' own OpenAPI schemas in
their strict JSON Schema form (unknown fields are errors), as packaged by kubernetes-validate
(Apache-2.0). That package holds 26 Kubernetes versions, 70 MB; the test needs the few kinds
FedVault writes, for one version: this script keeps those and everything they reference,
without descriptions, in one file. To regenerate (or move to another Kubernetes version):

    pip download kubernetes-validate==1.37.0 --no-deps -d /tmp/kv
    python scripts/kubernetes_schema_subset.py \
        /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl v1.33.0 \
        > tests/data/kubernetes-v1.33.0-strict.json
"""

from __future__ import annotations

import json
import sys
import zipfile

# apiVersion/kind -> the schema file kubernetes-validate names it by.
KINDS = {
    "v1/ConfigMap": "configmap-v1",
    "v1/Pod": "pod-v1",
    "v1/Secret": "secret-v1",
    "v1/Service": "service-v1",
    "v1/ServiceAccount": "serviceaccount-v1",
    "apps/v1/Deployment": "deployment-apps-v1",
    "networking.k8s.io/v1/NetworkPolicy": "networkpolicy-networking-v1",
    "rbac.authorization.k8s.io/v1/Role": "role-rbac-v1",
    "rbac.authorization.k8s.io/v1/RoleBinding": "rolebinding-rbac-v1",
}
DEFS = "#/$defs/"


def _strip(node: object, in_properties: bool = False) -> object:
    """Drop description texts and point references into this one file."""
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    kept = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str) and not in_properties:
            continue
        if key in ("$id", "$schema"):
            continue
        if key == "$ref":
            value = DEFS + _definition(value)
        kept[key] = _strip(value, in_properties=key == "properties" and not in_properties)
    return kept


def _definition(ref: str) -> str:
    """The definition a reference names (`/api/_definitions.json#/$defs/X` or `#/$defs/X`)."""
    return ref.rpartition(DEFS)[2]


def _references(node: object) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_references(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {_definition(node["$ref"])} if "$ref" in node else set()
    return found.union(*(_references(value) for value in node.values()))


def subset(wheel: str, version: str) -> dict:
    base = f"kubernetes_validate/kubernetes-json-schema/{version}-local-strict/"
    with zipfile.ZipFile(wheel) as archive:
        definitions = json.loads(archive.read(base + "_definitions.json"))["$defs"]
        kinds = {
            key: json.loads(archive.read(base + f"{name}.json")) for key, name in KINDS.items()
        }
    needed: set[str] = set()
    todo = set().union(*(_references(schema) for schema in kinds.values()))
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo |= _references(definitions[name])
    return {
        "$comment": f"Kubernetes {version} strict schemas from kubernetes-validate; see "
        "scripts/kubernetes_schema_subset.py",
        "kinds": {key: _strip(schema) for key, schema in kinds.items()},
        "$defs": {name: _strip(definitions[name]) for name in sorted(needed)},
    }


if __name__ == "__main__":
    json.dump(subset(sys.argv[1], sys.argv[2]), sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")
