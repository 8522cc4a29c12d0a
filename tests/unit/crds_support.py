"""Shared by the crds admission tests: a minimal Service manifest, the errors admission
reports for a document, and a user CRD (Website) to admit objects of."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.crds import admission, kinds

SOURCE = "file stack.yaml, document 2"


def service(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"template": {"image": "shoal/busybox"}}
    body.update(spec)
    return {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": body}


def errors_of(doc: Any, registry: kinds.Registry, source: str = "") -> list[str]:
    with pytest.raises(admission.ValidationError) as err:
        admission.admit(doc, registry, source)
    return [str(e) for e in err.value.errors]


WEBSITE_CRD = """
apiVersion: apiextensions.k8s.io/v1     # a Kubernetes CRD file applies unchanged
kind: CustomResourceDefinition
metadata:
  name: websites.example.com
  annotations: {controller-gen.kubebuilder.io/version: v0.14.0}
spec:
  group: example.com
  names: {kind: Website, plural: websites, singular: website, shortNames: [ws]}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [domain]
              properties:
                domain: {type: string, pattern: '^[a-z0-9.-]+$'}
                replicas: {type: integer, minimum: 1, default: 2}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""
