"""docs/deploy.md's commands point at what exists and agree with the manifests."""

from __future__ import annotations

import re
import shlex

from deploy_support import OVERLAYS, REPO, find, one, pod_spec

DOC = REPO / "docs" / "deploy.md"


def _text() -> str:
    return DOC.read_text()


def test_section_and_both_overlays_documented():
    text = _text()
    assert text.startswith("# Deploy on Kubernetes")
    for overlay in ("deploy/k8s/overlays/cpu-dev", "deploy/k8s/overlays/gpu"):
        assert f"kubectl apply -k {overlay}\n" in text


def test_kustomize_paths_in_commands_exist():
    paths = re.findall(r"kubectl (?:-n \S+ )?(?:apply|delete) -k (\S+)", _text())
    assert len(paths) >= 4
    known = {str(p.relative_to(REPO)) for p in OVERLAYS.values()}
    for path in paths:
        assert path in known, f"docs apply {path}, which the tests do not render"


def test_image_builds_match_overlay_images(rendered):
    builds = dict((tag, dockerfile) for dockerfile, tag in
                  re.findall(r"docker build -f (\S+) -t (\S+) \.", _text()))
    for dockerfile in builds.values():
        assert (REPO / dockerfile).is_file()
    for name, dockerfile in (("cpu-dev", "deploy/docker/Dockerfile.cpu"),
                             ("gpu", "deploy/docker/Dockerfile")):
        image = pod_spec(one(rendered[name], "Deployment", "mofe-serve"))["containers"][0]["image"]
        assert builds.get(image) == dockerfile, f"{name} runs {image}; docs build {builds}"


def test_secret_command_matches_the_secret_reference(rendered):
    made = set(re.findall(r"-n (\S+) create secret generic (\S+) --from-literal=([\w-]+)=",
                          _text()))
    for name in ("cpu-dev", "gpu"):
        objs = rendered[name]
        namespace = find(objs, "Namespace")[0]["metadata"]["name"]
        server = pod_spec(one(objs, "Deployment", "mofe-serve"))["containers"][0]
        ref = next(e for e in server["env"] if e["name"] == "MOFE_API_KEY")["valueFrom"]
        assert (namespace, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]) in made


def test_every_alert_is_documented(rendered):
    alerts = {r["alert"] for o in find(rendered["gpu"], "PrometheusRule")
              for g in o["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "MofeRoutingDataStale" in alerts
    missing = {a for a in alerts if f"`{a}`" not in _text()}
    assert not missing, f"docs/deploy.md does not describe {sorted(missing)}"


def _secret_commands() -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, secret) -> {key: literal as written} of every `create secret` line."""
    made: dict[tuple[str, str], dict[str, str]] = {}
    for line in _text().splitlines():
        match = re.search(r"-n (\S+) create secret generic (\S+) (.*)", line)
        if match:
            literals = shlex.split(match.group(3))
            made[match.group(1), match.group(2)] = dict(
                item.removeprefix("--from-literal=").split("=", 1) for item in literals
                if item.startswith("--from-literal="))
    return made


def test_team_registry_secrets_are_documented_and_the_url_parses(rendered):
    """Every Secret key the GPU server reads has a documented `create secret` command, and
    the documented registry URL is one `mofe registry` accepts (PostgreSQL + a bucket)."""
    from model_registry.config import parse_location

    made = _secret_commands()
    objs = rendered["gpu"]
    namespace = find(objs, "Namespace")[0]["metadata"]["name"]
    server = pod_spec(one(objs, "Deployment", "mofe-serve"))["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"] for e in server["env"]
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert {r["name"] for r in refs} >= {"mofe-registry", "mofe-registry-bucket"}
    for ref in refs:
        assert ref["key"] in made.get((namespace, ref["name"]), {}), ref
    url = made[namespace, "mofe-registry"]["url"]
    location = parse_location(url)
    assert location.is_postgres and location.artifacts.startswith("s3://")
    assert "@" in url and ":" not in url.split("//", 1)[1].split("@")[0]  # no password in it
    # The registering command uses the same registry the pods read.
    assert f"export MOFE_REGISTRY='{url}'" in _text()
