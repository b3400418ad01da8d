"""`make demo`: the whole product end to end on a tiny model, offline, in a few minutes.

tiny expert kit -> merge + frozen-FFN training -> a second variant trained from the same
merge -> verify -> register (alias prod) -> serve both variants from one engine (experts
held once) -> the same question to each through the official openai client, side by side,
each with its own request's routing summary -> routing table per variant and PNG -> batch
MedMCQA sample with report -> clean shutdown with no process left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("MOFE_DEMO_OUT", ROOT / "demo-out")).resolve()
MOFE = [sys.executable, "-m", "mofe_cli"]
API_KEY = "demo-key"
console = Console()
# No VLLM_CPU_KVCACHE_SPACE: `mofe serve` and `mofe batch` size the KV cache themselves.
ENV = {**os.environ, "MOFE_REGISTRY": str(OUT / "registry"), "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "VLLM_LOGGING_LEVEL": "WARNING"}


def step(title: str, *args: str) -> str:
    console.rule(f"[bold]{title}")
    console.print("$ mofe " + " ".join(args), style="dim")
    start = time.perf_counter()
    proc = subprocess.run([*MOFE, *args], env=ENV, text=True, capture_output=True)
    console.print(proc.stdout.rstrip())
    if proc.returncode != 0:
        console.print(proc.stderr[-4000:], style="red")
        raise SystemExit(f"demo step failed: {title}")
    console.print(f"[green]done in {time.perf_counter() - start:.1f}s")
    return proc.stdout


def fresh_routing(base_url: str, model: str, after: float, timeout: float = 30) -> dict:
    """The first /v1/routing snapshot of `model` read from the worker after `after` (unix
    time): the server polls the counters every second, so the newest requests show up
    within ~1 s."""
    req = urllib.request.Request(f"{base_url}/v1/routing?model={model}",
                                 headers={"Authorization": f"Bearer {API_KEY}"})
    deadline = time.time() + timeout
    while True:
        with urllib.request.urlopen(req, timeout=10) as r:
            routing = json.loads(r.read())
        if routing["updated_at"] > after or time.time() > deadline:
            return routing
        time.sleep(0.3)


def routing_report(base_url: str, models: list[str]) -> None:
    """One table per variant (each its own window on the one server), one PNG with both."""
    domains = json.loads((OUT / "checkpoint" / "mofe.json").read_text())["experts"]
    labels = [f"{e['index']}:{e['domain']}" for e in sorted(domains, key=lambda e: e["index"])]
    now = time.time()
    per_model = {}
    for model in models:
        routing = fresh_routing(base_url, model, now)
        table = Table(title=f"expert share per layer ({routing['model']}, "
                            f"top-{routing['top_k']})")
        table.add_column("layer")
        for label in labels:
            table.add_column(label, justify="right")
        shares = []
        for layer, counts in enumerate(routing["tokens"]):
            total = sum(counts) or 1
            shares.append([c / total for c in counts])
            table.add_row(str(layer), *(f"{s:.1%}" for s in shares[-1]))
        console.print(table)
        console.print("share by domain: " + ", ".join(f"{d}={s:.1%}"
                                                      for d, s in routing["domains"].items()))
        per_model[routing["model"]] = shares
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_model), figsize=(5 * len(per_model), 3.5),
                             squeeze=False)
    for ax, (model, shares) in zip(axes[0], per_model.items(), strict=True):
        im = ax.imshow(shares, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_yticks(range(len(shares)))
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title(model)
    fig.colorbar(im, ax=axes[0].tolist(), label="share of routed tokens")
    fig.savefig(OUT / "routing.png", dpi=120, bbox_inches="tight")


def main() -> None:
    started = time.perf_counter()
    marker = OUT / ".mofe-demo"
    if marker.exists():  # a previous demo's output: start clean
        shutil.rmtree(OUT)
    elif OUT.exists() and any(OUT.iterdir()):
        raise SystemExit(f"{OUT} is not empty and not a demo output; set MOFE_DEMO_OUT")
    OUT.mkdir(parents=True, exist_ok=True)
    marker.touch()
    kit = OUT / "kit"
    step("1. tiny expert kit", "dev", "tiny-experts", str(kit), "--overwrite")
    step("2. merge + frozen-FFN instruction tuning", "train", str(kit / "mofe.yaml"),
         "--set", f"output_dir={OUT / 'checkpoint'}", "--set", "training.max_steps=30")
    step("   a second variant: same merge, other seed, a few steps", "train",
         str(kit / "mofe.yaml"), "--set", f"output_dir={OUT / 'checkpoint-b'}",
         "--set", "merge=null", "--set", f"model={kit / 'merged'}", "--set", "seed=1",
         "--set", "training.max_steps=8", "--set", "training.learning_rate=3e-3")
    step("3. verify experts are bit-identical to their sources", "verify", str(OUT / "checkpoint"))
    step("4. register and alias prod", "registry", "register", str(OUT / "checkpoint"),
         "--name", "tiny-mofe", "--alias", "prod")
    step("   register the second variant", "registry", "register", str(OUT / "checkpoint-b"),
         "--name", "tiny-mofe-b")
    step("   lineage", "registry", "lineage", "tiny-mofe@prod")

    console.rule("[bold]5. serve tiny-mofe@prod and tiny-mofe-b@1 from one engine")
    # The one server harness (mofe_serve.server_process): `mofe serve` in its own process
    # group, stopped with SIGTERM and checked for leftovers the way the tests check it.
    from mofe_serve.server_process import ServerProcess, free_port

    port = free_port()
    server = ServerProcess([*MOFE, "serve", "tiny-mofe@prod", "tiny-mofe-b@1", "--port", str(port),
                            "--api-key", API_KEY, "--enforce-eager"], OUT / "server.log", port,
                           ENV, api_key=API_KEY)
    base_url = server.base_url
    try:
        try:
            server.wait_ready(timeout=300)
        except (RuntimeError, TimeoutError) as err:
            raise SystemExit(f"server did not become ready: {err}") from None
        console.print(f"[green]serving at {base_url} (log: {OUT / 'server.log'})")
        from openai import OpenAI

        client = OpenAI(base_url=base_url + "/v1", api_key=API_KEY)
        console.print("models: " + ", ".join(m.id for m in client.models.list().data))
        console.rule("[bold]6. the same question to both variants (official openai client)")
        models = ["tiny-mofe@prod", "tiny-mofe-b@1"]
        question = [{"role": "user", "content": "What is gustumide used for?"}]
        replies = Table(title="one server, two variants, experts held once")
        replies.add_column("model")
        replies.add_column("reply")
        replies.add_column("this request's routing (docs/serving.md)")
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(models)) as pool:  # both at once: mixed engine steps
            answers = list(pool.map(lambda m: client.chat.completions.create(
                model=m, max_tokens=32, temperature=0, messages=question,
                extra_body={"mofe": {"routing": True}}), models))
        for answer in answers:
            mine = answer.mofe_routing
            replies.add_row(answer.model, repr(answer.choices[0].message.content),
                            f"{mine['prompt_tokens']} prompt + {mine['completion_tokens']} "
                            "generated tokens; " + ", ".join(
                                f"{d}={v:.1%}" for d, v in mine["domains"].items()))
        console.print(replies)
        console.rule("[bold]7. routing per variant, per layer and domain")
        routing_report(base_url, models)
        step("8. batch MedMCQA sample", "batch", "tiny-mofe@prod", "--task", "medmcqa",
             "--input", str(kit / "data" / "medmcqa.jsonl"), "--output", str(OUT / "qa.jsonl"),
             "--report-png", "--no-progress")
        # Offline engine (the default): routing is attributed per subject, unlike on a
        # shared server. The report says whether medical subjects reach medical experts.
        from rich.markdown import Markdown

        console.print(Markdown((OUT / "qa.jsonl.report.md").read_text()))
    finally:
        console.rule("[bold]9. shutdown")
        left = server.stop(timeout=60)
        console.print("no process, shared memory or forced kill left" if not left
                      else f"[red]left over after SIGTERM: {left}")
        if server.proc.returncode == -signal.SIGKILL:  # stop() had to kill it
            raise SystemExit("server did not stop within 60 s after SIGTERM")
    console.rule("[bold]artifacts")
    for what, path in [("kit", kit), ("checkpoint", OUT / "checkpoint"),
                       ("registry", OUT / "registry"), ("routing plot", OUT / "routing.png"),
                       ("batch predictions", OUT / "qa.jsonl"),
                       ("batch report", OUT / "qa.jsonl.report.md"),
                       ("batch report plot", OUT / "qa.jsonl.report.png"),
                       ("second variant", OUT / "checkpoint-b"),
                       ("server log", OUT / "server.log")]:
        console.print(f"{what:18} {path}")
    console.print(f"[bold green]demo finished in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
