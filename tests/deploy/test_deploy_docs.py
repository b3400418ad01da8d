"""docs/deploy.md's commands point at what exists and agree with the manifests."""

from __future__ import annotations

import re

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
