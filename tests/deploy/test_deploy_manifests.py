"""deploy/k8s: schema validation offline, and the properties the deployment relies on.

Every property is checked on both the base and the example overlay (``rendered`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from dataflows.settings import Settings
from deploy.entrypoint import plan_from_env
from tests.deploy.conftest import BASE, DEPLOY, OVERLAY, render

# The oldest version the manifests claim (README: StatefulSet PVC retention is GA in 1.32)
# and the newest the installed kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.32.0", latest_version()]
# Custom resources have no bundled schema; they are kept out of every kustomization.
OPTIONAL_CRDS = {DEPLOY / "k8s" / "optional" / "podmonitor.yaml"}
MANIFESTS = sorted(p for p in (DEPLOY / "k8s").rglob("*.yaml") if p.name != "kustomization.yaml"
                   and not p.name.endswith("-patch.yaml") and p not in OPTIONAL_CRDS)
SECRET_HINTS = ("PASSWORD", "SECRET", "TOKEN", "SNAPSHOT_KEY", "SASL_USERNAME", "CREDENTIAL")


# -- schemas ----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates_against_the_api_schema(path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        # strict: an unknown field (a typo such as runAsNonroot) is an error, not ignored
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_against_the_api_schema(rendered, version: str) -> None:
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_optional_custom_resources_stay_out_of_the_kustomizations() -> None:
    for kustomization in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        text = kustomization.read_text()
        for crd in OPTIONAL_CRDS:
            assert crd.name not in text, f"{kustomization} pulls in {crd.name}, which cannot be validated"


# -- one Bytewax process per pod ----------------------------------------------------------------
def test_statefulset_forms_one_cluster_from_its_pods(rendered) -> None:
    sts, env = rendered.statefulset, rendered.env
    spec = sts["spec"]
    assert int(env["CLUSTER_REPLICAS"]) == spec["replicas"], "replicas and CLUSTER_REPLICAS must agree"
    assert int(env["CLUSTER_RECOVERY_PARTITIONS"]) >= 1
    peers = rendered.one("Service")
    assert peers["metadata"]["name"] == spec["serviceName"] == env["CLUSTER_SERVICE"]
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    assert peers["spec"]["selector"] == spec["selector"]["matchLabels"]
    bytewax_port = int(env["CLUSTER_PORT"])
    assert [p["port"] for p in peers["spec"]["ports"]] == [bytewax_port]
    assert {"name": "bytewax", "containerPort": bytewax_port, "protocol": "TCP"} in rendered.container["ports"]
    # all pods start together, and are replaced together (see deploy/README.md)
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    pod_env = {e["name"]: e for e in rendered.container["env"]}
    assert pod_env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod_env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # model shards are fixed, independent of the pod count
    assert int(env["FRAUDFLOW_MODEL_SHARDS"]) >= 1
    assert env["FRAUDFLOW_SOURCE"] == "kafka"


def test_one_recovery_volume_per_pod(rendered) -> None:
    spec = rendered.statefulset["spec"]
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    assert "recovery" in claims
    assert claims["recovery"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims["recovery"]["spec"]["resources"]["requests"]["storage"]
    # from the claim template (one PVC per pod), not a shared or ephemeral pod volume
    assert "recovery" not in {v["name"] for v in rendered.pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in rendered.container["volumeMounts"]}
    assert mounts["recovery"] == rendered.env["CLUSTER_RECOVERY_DIR"] == "/var/lib/fraudflow/recovery"
    assert mounts["snapshots"] == rendered.env["FRAUDFLOW_SNAPSHOT_DIR"] == "/var/lib/fraudflow/snapshots"
    assert "snapshots" in claims


def test_probes_use_the_flows_health_endpoints(rendered) -> None:
    c, env = rendered.container, rendered.env
    metrics_port = int(env["FRAUDFLOW_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in c["ports"]
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    # liveness must not kill a pod that is still starting: the startup probe allows minutes
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_prometheus_scrapes_the_metrics_port(rendered) -> None:
    annotations = rendered.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == rendered.env["FRAUDFLOW_METRICS_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_security_context_is_restricted(rendered) -> None:
    pod_spec, c = rendered.pod["spec"], rendered.container
    pod_sc, sc = pod_spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001 and pod_sc["fsGroup"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")
    assert not any(pod_spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod_spec["volumes"])
    assert pod_spec["automountServiceAccountToken"] is False
    # Service links would inject FRAUDFLOW_<SERVICE>_PORT=tcp://... and the flow refuses
    # unknown FRAUDFLOW_* variables.
    assert pod_spec["enableServiceLinks"] is False
    # read-only root: everything writable is a mounted volume
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/var/lib/fraudflow/recovery", "/var/lib/fraudflow/snapshots"}
    assert rendered.env["HOME"].startswith("/tmp") and rendered.env["MPLCONFIGDIR"].startswith("/tmp")


def test_resources_have_requests_and_limits(rendered) -> None:
    resources = rendered.container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    # one CPU per Bytewax worker thread
    assert float(resources["requests"]["cpu"]) >= int(rendered.env["CLUSTER_WORKERS"])


def test_pod_disruption_budget_covers_exactly_the_statefulset_pods(rendered) -> None:
    pdb = rendered.one("PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == rendered.statefulset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= rendered.pod["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1


def _rule_ports(rule: dict) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule["ports"]}


def test_network_policy_allows_only_peers_kafka_dns_and_the_scraper(rendered) -> None:
    policy, env = rendered.one("NetworkPolicy"), rendered.env
    spec = policy["spec"]
    pods = rendered.statefulset["spec"]["selector"]["matchLabels"]
    assert spec["podSelector"]["matchLabels"] == pods
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    bytewax = ("TCP", int(env["CLUSTER_PORT"]))
    metrics = ("TCP", int(env["FRAUDFLOW_METRICS_PORT"]))
    for rule in spec["ingress"] + spec["egress"]:
        # a rule without peers or without ports would open everything
        assert rule.get("from") or rule.get("to"), rule
        assert rule.get("ports"), rule
        for peer in rule.get("from", []) + rule.get("to", []):
            assert "ipBlock" not in peer or peer["ipBlock"]["cidr"] not in ("0.0.0.0/0", "::/0")
    ingress = {(tuple(sorted(_rule_ports(r))), yaml.safe_dump(r["from"])) for r in spec["ingress"]}
    assert ingress == {
        ((bytewax,), yaml.safe_dump([{"podSelector": {"matchLabels": pods}}])),
        ((metrics,), yaml.safe_dump([{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}])),
    }
    egress = spec["egress"]
    assert len(egress) == 3
    peers = [r for r in egress if r["to"] == [{"podSelector": {"matchLabels": pods}}]]
    assert len(peers) == 1 and _rule_ports(peers[0]) == {bytewax}
    dns = [r for r in egress if ("UDP", 53) in _rule_ports(r)]
    assert len(dns) == 1 and _rule_ports(dns[0]) == {("UDP", 53), ("TCP", 53)}
    assert dns[0]["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    kafka = [r for r in egress if r not in peers + dns]
    assert len(kafka) == 1
    broker_ports = {("TCP", int(b.rsplit(":", 1)[1])) for b in env["FRAUDFLOW_KAFKA_BROKERS"].split(",")}
    assert broker_ports <= _rule_ports(kafka[0]), "the brokers' port is not open for egress"


# -- settings and secrets -------------------------------------------------------------------------
def test_no_secret_values_in_the_repository() -> None:
    for path in (DEPLOY / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc.get("kind") != "Secret", f"{path} holds a Secret: create it in the cluster"
    for overlay_or_base in (BASE, OVERLAY):
        assert all(o["kind"] != "Secret" for o in render(overlay_or_base))


def test_secrets_are_referenced_as_mounted_files(rendered) -> None:
    c, pod_spec = rendered.container, rendered.pod["spec"]
    secret_volumes = {v["name"]: v["secret"] for v in pod_spec["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secret_volumes.values()} == {"fraudflow-kafka", "fraudflow-snapshot-key"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"] if m["name"] in secret_volumes}
    assert all(m.get("readOnly") for m in mounts.values())
    # every secret-looking setting is a *_FILE path to a key of a mounted Secret, or absent
    secret_settings = {k: v for k, v in rendered.env.items() if any(h in k for h in SECRET_HINTS)}
    assert set(secret_settings) == {"FRAUDFLOW_KAFKA_OPT_SASL_USERNAME_FILE", "FRAUDFLOW_KAFKA_OPT_SASL_PASSWORD_FILE",
                                    "FRAUDFLOW_SNAPSHOT_KEY_FILE"}
    for name, path in secret_settings.items():
        directory, _, key = path.rpartition("/")
        assert directory in mounts, f"{name} points outside the secret mounts"
        items = secret_volumes[mounts[directory]["name"]]["items"]
        assert key in {i["path"] for i in items}, f"{name}: no key {key} projected"
    assert not any(any(h in k for h in SECRET_HINTS) for k in rendered.one("ConfigMap")["data"])
    assert all("valueFrom" not in e or "fieldRef" in e["valueFrom"] for e in c["env"]), "no secretKeyRef in env"


def test_container_environment_is_accepted_by_the_flow_and_the_entrypoint(rendered, tmp_path) -> None:
    """What the pod would start with: FRAUDFLOW_* parse as Settings, CLUSTER_* as a plan."""
    env = dict(rendered.env)
    for name, value in list(env.items()):  # the mounted secrets, as dummy files
        if value.startswith("/var/run/secrets/"):
            dummy = tmp_path / name
            dummy.write_text("not-a-real-secret\n")
            env[name] = str(dummy)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("FRAUDFLOW_")})
    assert settings.input.source == "kafka" and settings.model.shards == int(env["FRAUDFLOW_MODEL_SHARDS"])
    assert settings.ops.metrics_port == 9464
    assert settings.kafka.options["security.protocol"] == "SASL_SSL"
    assert settings.kafka.options["sasl.password"] == "not-a-real-secret"
    replicas = rendered.statefulset["spec"]["replicas"]
    (tmp_path / "recovery").mkdir()
    plan = plan_from_env({**env, "POD_NAME": f"fraudflow-{replicas - 1}", "POD_NAMESPACE": "fraudflow",
                          "CLUSTER_RECOVERY_DIR": str(tmp_path / "recovery")})
    assert plan.ordinal == replicas - 1 and len(plan.addresses) == replicas
    assert plan.addresses[0] == "fraudflow-0.fraudflow-peers.fraudflow.svc.cluster.local:2101"
    assert plan.snapshot_s == int(env["CLUSTER_SNAPSHOT_S"])


def test_overlay_pins_a_registry_image(overlay) -> None:
    image = overlay.container["image"]
    name, _, tag = image.rpartition(":")
    assert "/" in name and tag and tag != "latest"
    assert overlay.one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in overlay.objects if o["kind"] != "Namespace"} == {"fraudflow"}
