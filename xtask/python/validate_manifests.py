"""Validates rendered Kubernetes manifests offline.

Core objects are checked by `kubernetes-validate` (the Kubernetes OpenAPI schemas,
strict: unknown fields are errors). Custom resources are checked against the JSON
schemas in `deployments/schemas/`, written from the published CRDs, whose pod
templates and containers point into the same Kubernetes definitions.

Usage: validate_manifests.py RENDERED.yaml SCHEMA_DIR [--kubernetes-version 1.32.0]
Prints one line per object; exits 1 if any object is invalid.
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import referencing
import kubernetes_validate
import yaml
from kubernetes_validate import utils

CUSTOM_RESOURCES = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.kubeflow.org-v1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.serving.kserve.io-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.serving.kserve.io-v1beta1.json",
}


def kubernetes_definitions(version: str) -> referencing.Registry:
    """The strict Kubernetes definitions, under the `$id` their own `$ref`s use."""
    definitions = utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


def validate_custom(document: dict, schema_path: pathlib.Path, registry: referencing.Registry) -> list:
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("schema_dir")
    parser.add_argument("--kubernetes-version", default="1.32.0")
    args = parser.parse_args()

    version = args.kubernetes_version
    registry = kubernetes_definitions(version)
    documents = [d for d in yaml.safe_load_all(pathlib.Path(args.rendered).read_text()) if d]
    failures = 0
    for document in documents:
        kind = document.get("kind", "?")
        name = document.get("metadata", {}).get("name", "?")
        key = (document.get("apiVersion"), kind)
        if key in CUSTOM_RESOURCES:
            errors = validate_custom(document, pathlib.Path(args.schema_dir) / CUSTOM_RESOURCES[key], registry)
            source = "CRD schema"
        else:
            source = f"Kubernetes {version}"
            try:
                kubernetes_validate.validate(document, version, strict=True)
                errors = []
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.absolute_path) or "<root>"
                errors = [f"{path}: {error.message}"]
            except kubernetes_validate.SchemaNotFoundError:
                errors = [f"no schema for {key[0]} {kind}: add one to {args.schema_dir}"]
        if errors:
            failures += 1
            for error in errors:
                print(f"INVALID {kind}/{name} ({source}): {error}")
        else:
            print(f"ok      {kind}/{name} ({source})")
    print(f"{len(documents)} objects, {failures} invalid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
