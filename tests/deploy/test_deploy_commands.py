"""Container commands against the real `mofe` CLI (click) and vLLM's argument parser."""

from __future__ import annotations

import click
import pytest
from deploy_support import (
    K8S,
    TEAM_REGISTRY_OVERLAYS,
    container_env,
    expand,
    generated,
    one,
    parse_mofe,
    pod_spec,
    script_commands,
)

# The project's own modules: an import error here is a failure, never a skip.
from model_registry import cli as registry_cli
from mofe_serve import launcher
from training import kit

SERVER_OVERLAYS = ("cpu-dev", "gpu", "gpu-hpa")
API_KEY = "deploy-test-key"


def _server(objs: list[dict]) -> dict:
    return pod_spec(one(objs, "Deployment", "mofe-serve"))["containers"][0]


def _serve_args(objs: list[dict]) -> list[str]:
    server = _server(objs)
    assert server["command"] == ["tini", "--", "mofe", "serve"]
    args = expand(server["args"], container_env(objs, server))
    assert not any("$(" in a for a in args), f"unexpanded variable in {args}"
    return args


def test_container_command_is_a_valid_mofe_serve_invocation(rendered, monkeypatch):
    monkeypatch.setenv("MOFE_API_KEY", API_KEY)  # what the secretKeyRef provides
    for name in SERVER_OVERLAYS:
        objs = rendered[name]
        args = _serve_args(objs)
        # Through the real `mofe` root group, as tini runs it.
        ctx = parse_mofe(["mofe", "serve", *args])
        assert ctx.command.name == "serve"
        ref = generated(objs, "ConfigMap", "mofe-serve-config")["data"]["MOFE_MODEL_REF"]
        assert ctx.params["ref"] == ref and ctx.params["host"] == "0.0.0.0"
        # `mofe serve` takes the key from the env var the Secret fills.
        assert ctx.params["api_key"] == API_KEY
        # Everything click passes on must be a valid vLLM engine/server argument.
        launcher.parse_vllm_args(["--model", "/models/registry/x", *ctx.args])
    assert "--enforce-eager" in _serve_args(rendered["cpu-dev"])
    assert "--gpu-memory-utilization" in _serve_args(rendered["gpu"])


def test_a_misspelled_engine_option_would_be_caught(rendered):
    args = _serve_args(rendered["cpu-dev"]) + ["--max-model-lenn", "4"]
    ctx = parse_mofe(["mofe", "serve", *args])
    with pytest.raises(SystemExit):
        launcher.parse_vllm_args(["--model", "/models/registry/x", *ctx.args])


def test_batch_job_is_a_valid_mofe_batch_invocation(rendered):
    objs = rendered["batch-qa"]
    job = one(objs, "Job", "mofe-batch-qa")
    container = pod_spec(job)["containers"][0]
    assert container["command"] == ["tini", "--", "mofe", "batch"]
    args = expand(container["args"], container_env(objs, container))
    ctx = parse_mofe(["mofe", "batch", *args])
    assert ctx.command.name == "batch" and ctx.params["task"] == "medmcqa"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in (ctx.params["input_"], ctx.params["output"]):
        assert mounts.get(str(path.parent)) == "data", f"{path} is not on the data volume"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v}
    assert claims["data"] == one(objs, "PersistentVolumeClaim")["metadata"]["name"]
    # The job reads the overlays' model store and serves the same model.
    assert claims["models"] == "mofe-models"
    assert ctx.params["ref"] == generated(rendered["cpu-dev"], "ConfigMap",
                                          "mofe-serve-config")["data"]["MOFE_MODEL_REF"]


def test_model_store_registers_what_the_server_serves(rendered):
    for name in SERVER_OVERLAYS:
        objs = rendered[name]
        if name in TEAM_REGISTRY_OVERLAYS:  # registered elsewhere; the server only resolves
            init = pod_spec(one(objs, "Deployment", "mofe-serve")).get("initContainers", [])
            assert "register-model" not in {c["name"] for c in init}, name
            continue
        store = generated(objs, "ConfigMap", "mofe-model-store")["data"]
        ref = generated(objs, "ConfigMap", "mofe-serve-config")["data"]["MOFE_MODEL_REF"]
        assert f"{store['MOFE_MODEL_NAME']}@{store['MOFE_MODEL_ALIAS']}" == ref
        spec = pod_spec(one(objs, "Deployment", "mofe-serve"))
        init = {c["name"]: c for c in spec["initContainers"]}
        register = init["register-model"]
        env = container_env(objs, register)
        assert env["MOFE_REGISTRY"] == container_env(objs, spec["containers"][0])["MOFE_REGISTRY"]
        assert env["MOFE_INCOMING_DIR"].startswith("/models/")
        # The init container runs the script the ConfigMap ships.
        script = generated(objs, "ConfigMap", "mofe-model-store-scripts")["data"]
        assert register["command"][-1].split("/")[-1] in script
    tiny = [c["name"] for c in pod_spec(one(rendered["cpu-dev"], "Deployment",
                                            "mofe-serve"))["initContainers"]]
    assert tiny == ["build-tiny-model", "register-model"]  # build before register


def test_model_store_script_agrees_with_the_registry_cli(tmp_path):
    """register-model.sh uses `mofe registry register/resolve` with options that exist."""
    group = registry_cli.registry_cli
    script = (K8S / "components" / "model-store" / "register-model.sh").read_text()
    register = group.get_command(None, "register")
    resolve = group.get_command(None, "resolve")
    assert register is not None and resolve is not None
    ctx = register.make_context("register", [str(tmp_path), "--name", "mofe-tiny",
                                             "--alias", "prod"])
    assert ctx.params["name"] == "mofe-tiny" and ctx.params["aliases"] == ("prod",)
    resolve.make_context("resolve", ["mofe-tiny@prod"])
    assert "mofe registry register" in script and "mofe registry resolve" in script
    # The registry root comes from MOFE_REGISTRY, which the init container sets.
    assert any(p.envvar == "MOFE_REGISTRY" for p in group.params)


def test_cpu_dev_builds_a_tiny_model_it_can_serve(rendered):
    """The build-tiny-model init container runs valid `mofe` commands, writes where
    register-model reads, and the served context fits the kit model."""
    objs = rendered["cpu-dev"]
    spec = pod_spec(one(objs, "Deployment", "mofe-serve"))
    build = next(c for c in spec["initContainers"] if c["name"] == "build-tiny-model")
    commands = script_commands(build["args"][0])
    assert [c[:2] for c in commands] == [["mofe", "dev"], ["mofe", "train"], ["mofe", "verify"]]
    for argv in commands:
        parse_mofe(argv)
    incoming = generated(objs, "ConfigMap", "mofe-model-store")["data"]["MOFE_INCOMING_DIR"]
    assert commands[-1][-1] == incoming  # verified and registered: the same directory
    assert commands[1][-1] == f"output_dir={incoming}"
    max_len = int(generated(objs, "ConfigMap", "mofe-serve-config")["data"]["MOFE_MAX_MODEL_LEN"])
    assert max_len <= kit.KitSizes().max_positions


def test_unknown_mofe_options_are_rejected():
    with pytest.raises(click.UsageError):
        parse_mofe(["mofe", "dev", "tiny-experts", "/tmp/x", "--overwrit"])
