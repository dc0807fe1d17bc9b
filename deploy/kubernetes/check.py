#!/usr/bin/env python3
"""Validates deploy/kubernetes offline: the built-in kinds with kubernetes-validate
--strict (its bundled Kubernetes schemas), the ScaledObject against the openAPIV3Schema
of KEDA's own CRD (crd/keda.sh_scaledobjects.yaml), and each trigger's metadata keys
against the ones its KEDA scaler documents (the CRD leaves them an open map). Exit 0:
every document valid.

    python3 deploy/kubernetes/check.py          (pip install kubernetes-validate)
"""
import glob
import os
import subprocess
import sys

import jsonschema
import yaml

here = os.path.dirname(os.path.abspath(__file__))
# The files `kubectl apply -f deploy/kubernetes/` applies, and the variants to use in
# place of one of them (variants/: applied by hand, never together with the default).
manifests = sorted(glob.glob(os.path.join(here, "*.yaml"))) + sorted(
    glob.glob(os.path.join(here, "variants", "*.yaml"))
)
# Two documents of one kind and name in the applied set: the second silently replaces
# the first.
seen = {}
for path in sorted(glob.glob(os.path.join(here, "*.yaml"))):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in seen, f"{key} in {seen.get(key)} and {path}"
                seen[key] = path
builtin, custom = [], []
for path in manifests:
    with open(path) as f:
        kinds = {doc["kind"] for doc in yaml.safe_load_all(f) if doc}
    (custom if kinds == {"ScaledObject"} else builtin).append(path)
assert builtin and custom, (builtin, custom)

# The metadata keys each trigger type accepts, as KEDA's documentation lists them
# (parameters and their ...FromEnv forms; credentials given through a
# TriggerAuthentication are not metadata):
# https://keda.sh/docs/2.16/scalers/redis-lists/ and
# https://keda.sh/docs/2.16/scalers/redis-sentinel-lists/
TRIGGER_METADATA = {
    "redis": {
        "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
        "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
        "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
    },
    "redis-sentinel": {
        "addresses", "addressesFromEnv", "hosts", "hostsFromEnv", "ports", "portsFromEnv",
        "usernameFromEnv", "passwordFromEnv", "sentinelUsernameFromEnv",
        "sentinelPasswordFromEnv", "sentinelMaster", "sentinelMasterFromEnv", "listName",
        "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
    },
}
REQUIRED_METADATA = {
    "redis": [{"listName"}, {"listLength"}, {"address", "addressFromEnv", "host", "hostFromEnv"}],
    "redis-sentinel": [
        {"listName"}, {"listLength"},
        {"addresses", "addressesFromEnv", "hosts", "hostsFromEnv"},
        {"sentinelMaster", "sentinelMasterFromEnv"},
    ],
}


def trigger_errors(doc):
    """What is wrong with the triggers' metadata keys of one ScaledObject."""
    errors = []
    for i, trigger in enumerate(doc.get("spec", {}).get("triggers", [])):
        kind = trigger.get("type")
        known = TRIGGER_METADATA.get(kind)
        if known is None:
            errors.append(f"triggers/{i}: type {kind!r} is not one this check knows")
            continue
        keys = set(trigger.get("metadata", {}))
        for key in sorted(keys - known):
            errors.append(f"triggers/{i}/metadata: {key!r} is not a {kind} scaler key")
        for one_of in REQUIRED_METADATA[kind]:
            if not keys & one_of:
                errors.append(f"triggers/{i}/metadata: needs one of {sorted(one_of)}")
    return errors


failed = False
run = subprocess.run(
    ["kubernetes-validate", "--strict", *builtin], capture_output=True, text=True
)
print(run.stdout + run.stderr, end="")
if run.returncode != 0 or "WARN" in run.stdout + run.stderr:
    print("FAIL: kubernetes-validate --strict")
    failed = True

with open(os.path.join(here, "crd", "keda.sh_scaledobjects.yaml")) as f:
    crd = yaml.safe_load(f)
group = crd["spec"]["group"]
versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
for path in custom:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            name = f"{os.path.basename(path)}: {doc['kind']}/{doc['metadata']['name']}"
            api_group, _, version = doc["apiVersion"].partition("/")
            if api_group != group or version not in versions:
                print(f"FAIL {name}: apiVersion {doc['apiVersion']} is not in the CRD")
                failed = True
                continue
            schema = versions[version]
            # Strict, as kubectl's server-side validation: no field the schema lacks.
            def close(node):
                if isinstance(node, dict):
                    if node.get("type") == "object" and "properties" in node \
                            and "additionalProperties" not in node \
                            and not node.get("x-kubernetes-preserve-unknown-fields"):
                        node["additionalProperties"] = False
                    for value in node.values():
                        close(value)
                elif isinstance(node, list):
                    for value in node:
                        close(value)
            close(schema)
            # metadata is ObjectMeta, which the CRD leaves open; check what it holds.
            schema["properties"]["metadata"] = {"type": "object"}
            errors = sorted(
                jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: e.path
            )
            for error in errors:
                print(f"FAIL {name}: {'/'.join(map(str, error.path))}: {error.message}")
            metadata_errors = trigger_errors(doc)
            for error in metadata_errors:
                print(f"FAIL {name}: {error}")
            if errors or metadata_errors:
                failed = True
            else:
                print(f"INFO {name} passed against {crd['metadata']['name']} ({version})")
sys.exit(1 if failed else 0)
