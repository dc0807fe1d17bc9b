#!/usr/bin/env python3
"""Validates deploy/kubernetes offline: the built-in kinds with kubernetes-validate
--strict (its bundled Kubernetes schemas), the ScaledObject against the openAPIV3Schema
of KEDA's own CRD (crd/keda.sh_scaledobjects.yaml). Exit 0: every document valid.

    python3 deploy/kubernetes/check.py          (pip install kubernetes-validate)
"""
import glob
import os
import subprocess
import sys

import jsonschema
import yaml

here = os.path.dirname(os.path.abspath(__file__))
manifests = sorted(glob.glob(os.path.join(here, "*.yaml")))
builtin, custom = [], []
for path in manifests:
    with open(path) as f:
        kinds = {doc["kind"] for doc in yaml.safe_load_all(f) if doc}
    (custom if kinds == {"ScaledObject"} else builtin).append(path)
assert builtin and custom, (builtin, custom)

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
            if errors:
                failed = True
            else:
                print(f"INFO {name} passed against {crd['metadata']['name']} ({version})")
sys.exit(1 if failed else 0)
