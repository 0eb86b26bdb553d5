"""Validates custom resources against the openAPIV3Schema of the CRDs in a rendered manifest.

kubernetes-validate knows the built-in kinds only; this checks that the charts' own CRDs accept
the objects the zone reads and writes, and reject malformed ones (those labelled
`strait.dev/expect: invalid`). Usage: crd-samples.py RENDERED.yaml SAMPLES.yaml
Prints one line per sample and exits 1 if any sample is judged wrongly.
"""

import sys

import jsonschema
import yaml


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main(rendered, samples):
    schemas = {}
    for doc in load(rendered):
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    if not schemas:
        print("no CustomResourceDefinition in", rendered)
        return 1
    wrong = 0
    for doc in load(samples):
        key = (doc["apiVersion"], doc["kind"])
        name = f"{doc['kind']} {doc['metadata']['name']}"
        expect_valid = doc["metadata"].get("labels", {}).get("strait.dev/expect") != "invalid"
        if key not in schemas:
            print(f"FAIL {name}: no CRD for {key[0]} {key[1]} in the chart")
            wrong += 1
            continue
        errors = list(jsonschema.Draft7Validator(schemas[key]).iter_errors(doc))
        if expect_valid and errors:
            print(f"FAIL {name}: rejected: {errors[0].message}")
            wrong += 1
        elif not expect_valid and not errors:
            print(f"FAIL {name}: accepted, but it is malformed")
            wrong += 1
        else:
            verdict = "accepted" if expect_valid else f"rejected as expected ({errors[0].message})"
            print(f"ok   {name}: {verdict}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
