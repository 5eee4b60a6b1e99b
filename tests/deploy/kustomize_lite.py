"""A small kustomize renderer for the subset deploy/k8s uses, so the tests need no binary.

Supported kustomization fields (anything else is an error, so the renderer cannot silently
diverge from kustomize when someone uses a new feature):

* ``resources``: YAML files, or directories holding a kustomization.yaml (rendered first);
* ``namespace``: set on every namespaced object;
* ``labels`` with ``includeSelectors: false`` and ``includeTemplates: false``: added to
  ``metadata.labels`` only;
* ``images``: ``newName`` / ``newTag`` for containers whose image name matches ``name``;
* ``patches`` with ``path``: strategic merge patches matched by kind and name. Maps merge
  recursively, ``null`` deletes a key, lists of maps that all have a ``name`` merge by name
  (the patch's items first, then the untouched originals, as kustomize orders them), other
  lists are replaced.

When ``kubectl`` is installed, tests/deploy/test_deploy_manifests.py checks that this renderer
and ``kubectl kustomize`` (kustomize v5) produce the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RenderError", "render"]

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


class RenderError(ValueError):
    """The kustomization uses something this renderer does not implement, or is broken."""


def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[dict]:
    """The objects ``kustomize build directory`` would output (order: resources order)."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise RenderError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load_docs(path)
    for patch_ref in kustomization.get("patches", []):
        if set(patch_ref) != {"path"}:
            raise RenderError(f"{directory}: only file patches (path:) are supported, got {patch_ref}")
        for patch in _load_docs(directory / patch_ref["path"]):
            target = [o for o in objects if o["kind"] == patch["kind"]
                      and o["metadata"]["name"] == patch["metadata"]["name"]]
            if len(target) != 1:
                raise RenderError(f"patch {patch_ref['path']} matches {len(target)} objects")
            merged = strategic_merge(target[0], patch)
            objects[objects.index(target[0])] = merged
    for label_set in kustomization.get("labels", []):
        if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
            raise RenderError("labels: only includeSelectors: false without includeTemplates is supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        raise RenderError(f"image digests are not supported: {image}")
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return name, tag


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def strategic_merge(original: Any, patch: Any) -> Any:
    """``patch`` applied to ``original`` (neither is modified)."""
    if isinstance(original, dict) and isinstance(patch, dict):
        out = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(original, list) and isinstance(patch, list) and _named(original) and _named(patch):
        by_name = {item["name"]: item for item in original}
        merged = [strategic_merge(by_name[p["name"]], p) if p["name"] in by_name else copy.deepcopy(p)
                  for p in patch]
        patched = {p["name"] for p in patch}
        return merged + [copy.deepcopy(o) for o in original if o["name"] not in patched]
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)
