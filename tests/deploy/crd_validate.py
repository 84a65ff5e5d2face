"""Validate custom resources against the openAPIV3Schema of their CRDs.

Run by the deploy-tools venv (it has jsonschema and PyYAML), not by the test
interpreter::

    python crd_validate.py --crds DIR manifests.yaml

Every document whose apiVersion/kind one of the CRDs in DIR defines is validated
against the schema of that served version, strictly: an object schema that lists
``properties`` rejects any other field unless it says
``x-kubernetes-preserve-unknown-fields`` (which is what the API server's pruning
and ``kubectl --validate=strict`` do). Documents of other kinds are skipped.
Prints one JSON object: {"validated": [...], "skipped": [...], "errors": [...]};
exit status 1 when there are errors.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml


def strict(schema: Any) -> Any:
    """Return a copy of an OpenAPI v3 schema that rejects unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crd_schemas(crd_dir: Path) -> dict[tuple[str, str], Any]:
    """Map (apiVersion, kind) to the strict schema of that served version."""
    schemas: dict[tuple[str, str], Any] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict(version["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata are the API server's, not the CRD's.
                schema.setdefault("properties", {})
                schema["properties"]["apiVersion"] = {"type": "string"}
                schema["properties"]["kind"] = {"type": "string"}
                schema["properties"]["metadata"] = {"type": "object"}
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--crds", type=Path, required=True, help="directory of CRD YAML files")
    parser.add_argument("manifests", type=Path, nargs="+")
    args = parser.parse_args(argv)

    schemas = load_crd_schemas(args.crds)
    if not schemas:
        print(f"no CustomResourceDefinition in {args.crds}", file=sys.stderr)
        return 2
    report: dict[str, list[str]] = {"validated": [], "skipped": [], "errors": []}
    for path in args.manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            key = (doc.get("apiVersion", ""), doc.get("kind", ""))
            name = f"{key[1]}/{doc.get('metadata', {}).get('name', '?')}"
            schema = schemas.get(key)
            if schema is None:
                report["skipped"].append(name)
                continue
            validator = jsonschema.Draft7Validator(schema)
            problems = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            for problem in problems:
                where = ".".join(str(p) for p in problem.absolute_path) or "<root>"
                report["errors"].append(f"{path}: {name}: {where}: {problem.message}")
            report["validated"].append(name)
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
