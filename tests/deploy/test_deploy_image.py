"""deploy/Dockerfile, /.dockerignore, deploy/requirements.lock and constraints.txt, checked without Docker.

No image can be built here (no Docker engine); these tests check what a build depends on:
the instructions' shape, that every COPY source is in the build context, that the lock pins
the complete runtime dependency closure at the versions the tests run with, and that
`make install` installed exactly constraints.txt (both files are written by pip-compile:
`make lock`).
"""

from __future__ import annotations

import fnmatch
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
CONSTRAINTS = ROOT / "constraints.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
TEST_ONLY = [Requirement(r) for r in PROJECT["optional-dependencies"]["test"]]
# The image: python:3.12-slim (Debian, glibc), amd64 or arm64.
IMAGE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.0", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "os_name": "posix", "platform_machine": "x86_64", "extra": "",
}


def pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a pip-compile output file; every line must be ``name==version``."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==" and "*" not in spec.version, f"{path.name}: not pinned: {line}"
            found[canonicalize_name(req.name)] = spec.version
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def test_multi_stage_build_on_python_312_slim() -> None:
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in instructions() if k == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"].startswith("python:3.12-slim")
    builder, runtime = stages()
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    run_args = " ".join(a for k, a in builder if k == "RUN")
    assert "--no-deps -r deploy/requirements.lock" in run_args and "--only-binary=:all:" in run_args
    assert " check" in run_args, "pip check verifies the locked set is complete"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    # nothing installs Python packages in the runtime stage
    assert not any(k == "RUN" and "pip " in a for k, a in runtime)


def test_runtime_runs_as_a_fixed_non_root_user_with_the_entrypoint() -> None:
    runtime = stages()[-1]
    users = [a for k, a in runtime if k == "USER"]
    assert users == ["10001:10001"]
    statefulset = yaml.safe_load((ROOT / "deploy/k8s/base/statefulset.yaml").read_text())
    pod_sc = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"]) == (10001, 10001), "image and manifest must agree"
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    entrypoint = [a for k, a in runtime if k == "ENTRYPOINT"]
    assert entrypoint == ['["/usr/bin/tini", "--", "python", "/app/entrypoint.py"]']
    assert ("COPY", "deploy/entrypoint.py /app/entrypoint.py") in runtime
    run = " ".join(a for k, a in runtime if k == "RUN")
    assert "--uid 10001" in run and "--gid 10001" in run and "tini" in run


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def in_context(path: str) -> bool:
    """Whether ``path`` reaches the builder: the last matching .dockerignore rule decides."""
    included = True
    for include, pattern in _dockerignore():
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            included = include
    return included


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources += shlex.split(args)[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py") if "__pycache__" not in p.parts]
        assert files and all(in_context(f) for f in files), f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/config", "tests/conftest.py", "fraudflow-output/a.jsonl",
                                  "deploy/k8s/base/statefulset.yaml", "dataflows/__pycache__/fraud.cpython-312.pyc"])
def test_the_build_context_leaves_out_everything_else(path: str) -> None:
    assert not in_context(path)


def test_lock_pins_the_complete_runtime_closure_at_the_tested_versions() -> None:
    lock, tested = pins(LOCK), pins(CONSTRAINTS)
    assert {name: tested.get(name) for name in lock} == lock, "the image and the tests resolve differently: make lock"
    for dep in RUNTIME:
        assert lock[canonicalize_name(dep.name)] in dep.specifier, f"{dep} not satisfied by the lock"
    for name, version in lock.items():  # pip check for the image's platform, without the image
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed: make install")
        assert dist.version == version, f"{name}: tests run {dist.version}, the image gets {version}: make install"
        for req in map(Requirement, dist.requires or ()):
            if req.marker is None or req.marker.evaluate(IMAGE_MARKERS):
                got = lock.get(canonicalize_name(req.name))
                assert got is not None, f"{name} needs {req}, missing from the lock: make lock"
                assert req.specifier.contains(got, prereleases=True), f"{name} needs {req}, the lock has {got}"
    assert not {canonicalize_name(r.name) for r in TEST_ONLY} & set(lock), "test-only packages do not belong in the image"


def test_the_environment_is_exactly_the_constraints() -> None:
    """`make install` installs constraints.txt: what runs here is what a fresh machine and CI get."""
    tested = pins(CONSTRAINTS)
    for dep in RUNTIME + TEST_ONLY:
        assert canonicalize_name(dep.name) in tested and tested[canonicalize_name(dep.name)] in dep.specifier, dep
    installed = {}
    for name in tested:
        try:
            installed[name] = distribution(name).version
        except PackageNotFoundError:
            installed[name] = None
    assert installed == tested, "the environment differs from constraints.txt: make install (or make lock)"


def test_every_dependency_has_an_upper_bound() -> None:
    """A new major (or, before 1.0, minor) release of a dependency is taken only through `make lock`."""
    for dep in RUNTIME + TEST_ONLY:
        assert any(s.operator in ("<", "<=", "==", "~=") for s in dep.specifier), f"{dep}: no upper bound"
