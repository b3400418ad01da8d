"""Frozen experts stored once: bytes on disk and register/resolve times of the registry.

    .venv/bin/python benchmarks/registry_dedup.py [--hidden 512 --experts 8 ...] [--rounds 2]
                                                  [--metadata postgresql|sqlite|URL]

Builds one random "merge" (a Mixtral whose experts dominate its size, by
training/test_models.py), derives 3 MoFE variants from it (same experts, other embeddings,
attention, norms, routers and lm_head: what MoFE training changes) plus 1 unrelated model
(other experts), and registers the four into
  local:  SQLite + the local folder store (hard links into blobs/)
  s3:     SQLite + the fsspec store on an S3-compatible server (moto on loopback, standing in
          for a bucket: its times are moto's, in this process, not a real S3's)
  pg-s3:  PostgreSQL metadata + the same S3 stand-in, opened from the team URL as users give
          it (postgresql://...?artifacts=s3://..., endpoint and keys from AWS_* variables)
alternating the set-ups (ABCCBA over --rounds). Prints bytes stored (each inode counted once;
objects under the bucket prefix) against the sum of the checkpoint sizes, register and resolve
times (resolve on S3: a second node with an empty cache), and the same figure computed from
tensor sizes for 4 TinyLlama-shaped experts and 10 variants.

--metadata: `postgresql` (default): a throw-away PostgreSQL cluster (benchmarks/pg_cluster.py,
a real server on a Unix socket, fsync off, a fresh database per run). `sqlite`: leave out
pg-s3. A postgresql:// URL: an existing database (model names carry the round, so runs do
not collide; what they register stays there).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_registry.checkpoint import EXPERT_PARAM_MARKERS, weight_files  # noqa: E402
from model_registry.config import CACHE_ENV  # noqa: E402
from model_registry.registry import Registry  # noqa: E402

GiB = 1 << 30


# ---- models ---------------------------------------------------------------------------------
def build_models(work: Path, opts) -> tuple[list[Path], Path]:
    from training.kit import KitSizes
    from training.test_models import build_random_mixtral

    sizes = KitSizes(vocab_size=opts.vocab, hidden_size=opts.hidden,
                     intermediate_size=opts.intermediate, num_layers=opts.layers,
                     num_heads=opts.heads, num_kv_heads=opts.kv_heads)
    merge = build_random_mixtral(work / "merge", sizes, experts=opts.experts, seed=0,
                                 dtype="bfloat16")
    variants = [derive_variant(merge, work / f"variant-{i}", seed=i) for i in (1, 2, 3)]
    unrelated = build_random_mixtral(work / "unrelated", sizes, experts=opts.experts, seed=99,
                                     dtype="bfloat16")
    return variants, unrelated


def derive_variant(merge: Path, out: Path, seed: int) -> Path:
    """The merge with every non-expert tensor nudged: a stand-in for a MoFE training run."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(merge, out)
    gen = torch.Generator().manual_seed(seed)
    for f in weight_files(out):
        state = load_file(str(f))
        for name, t in state.items():
            if not any(m in name for m in EXPERT_PARAM_MARKERS):
                state[name] = (t.float() + 1e-3 * torch.randn(t.shape, generator=gen)).to(t.dtype)
        save_file(state, str(f), metadata={"format": "pt"})
    return out


def dir_bytes(*roots: Path) -> int:
    """Bytes on disk, each inode once (hard links are one file)."""
    seen, total = set(), 0
    for root in roots:
        for p in root.rglob("*"):
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# ---- set-ups ------------------------------------------------------------------------------
class MotoS3:
    def __init__(self):
        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench",
                        "secret": "bench", "client_kwargs": {"region_name": "us-east-1"}}
        boto3.client("s3", endpoint_url=self.options["endpoint_url"], aws_access_key_id="bench",
                     aws_secret_access_key="bench", region_name="us-east-1"
                     ).create_bucket(Bucket="mofe-bench")

    def stop(self):
        self.server.stop()

    def environ(self) -> dict[str, str]:
        """The endpoint and keys as a user of the team URL gives them (boto's variables)."""
        return {"AWS_ENDPOINT_URL": self.options["endpoint_url"], "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


class Postgres:
    """Where pg-s3 keeps its metadata: a fresh database of a throw-away cluster per run,
    or the database of a given URL."""

    def __init__(self, url: str | None):
        self.url, self.cluster = url, None
        if url is None:
            from benchmarks.pg_cluster import PostgresCluster, find_bindir

            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("--metadata postgresql: no PostgreSQL server binaries "
                                 "(initdb, pg_ctl); install Debian's `postgresql`, or pass "
                                 "--metadata sqlite")
            self.cluster = PostgresCluster(bindir).start()

    def database(self) -> str:
        """libpq URL of an empty database (the given URL: the same database every run)."""
        if self.cluster is None:
            return self.url
        return self.cluster.conninfo(self.cluster.create_database())

    def stop(self):
        if self.cluster is not None:
            self.cluster.stop()


def _registry(kind: str, root: Path, s3: MotoS3, pg_url: str | None, tag: str, node: str,
              read_only: bool = False) -> Registry:
    if kind == "local":
        return Registry(root, read_only=read_only)
    cache = root / f"{node}-cache"
    if kind == "s3":
        return Registry(root, artifacts=f"s3://mofe-bench/{tag}", cache_dir=cache,
                        storage_options=s3.options, read_only=read_only)
    # pg-s3: the team URL, read as `mofe` reads it (config.py); the node cache from its
    # variable, the endpoint and keys from boto's (MotoS3.environ, set in main)
    os.environ[CACHE_ENV] = str(cache)
    sep = "&" if "?" in pg_url else "?"
    return Registry(f"{pg_url}{sep}artifacts=s3://mofe-bench/pg-{tag}", read_only=read_only)


def run_setup(kind: str, models: list[Path], work: Path, s3: MotoS3, pg: Postgres | None,
              tag: str) -> dict:
    root = work / f"{kind}-{tag}"
    pg_url = pg.database() if kind == "pg-s3" else None
    out = {"register_s": [], "stored_after": []}
    with _registry(kind, root, s3, pg_url, tag, "node1") as reg:
        for i, model in enumerate(models):
            start = time.perf_counter()
            reg.register(model, f"m{i}-{tag}")
            out["register_s"].append(time.perf_counter() - start)
            out["stored_after"].append(stored_bytes(kind, reg, root))
    # resolve: local = the registering machine; s3, pg-s3 = a second node, empty cache
    with _registry(kind, root, s3, pg_url, tag, "node2", read_only=True) as reader:
        out["resolve_s"] = []
        for i in range(len(models)):
            start = time.perf_counter()
            reader.resolve(f"m{i}-{tag}")
            out["resolve_s"].append(time.perf_counter() - start)
        if kind != "local":
            out["downloaded"] = len(reader.artifacts.downloads)
            out["node_cache_bytes"] = dir_bytes(root / "node2-cache")
    shutil.rmtree(root, ignore_errors=True)
    return out


def stored_bytes(kind: str, reg: Registry, root: Path) -> int:
    if kind == "local":
        return dir_bytes(root / "artifacts", root / "blobs")
    fs = reg.artifacts.fs
    fs.invalidate_cache()
    return sum(fs.du(reg.artifacts.base, total=False).values())


# ---- on paper -----------------------------------------------------------------------------
def paper_figure(experts=4, variants=10, hidden=2048, intermediate=5632, layers=22,
                 vocab=32000, heads=32, kv_heads=4, dtype_bytes=2) -> dict:
    """Bytes of a TinyLlama-shaped MoFE model from its tensor shapes (untied lm_head)."""
    head_dim = hidden // heads
    attn = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    own_per_layer = attn + 2 * hidden + experts * hidden  # + 2 norms + router
    own = layers * own_per_layer + 2 * vocab * hidden + hidden  # + embed, lm_head, final norm
    expert = layers * experts * 3 * hidden * intermediate
    one = (own + expert) * dtype_bytes
    return {"own_params": own, "expert_params": expert, "one_bytes": one,
            "copies_bytes": variants * one,
            "dedup_bytes": (expert + variants * own) * dtype_bytes,
            "dedup_3_bytes": (expert + 3 * own) * dtype_bytes, "variants": variants}


def _spread(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.median(xs):.{digits}f} s ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


_PEAK = """
import re, sys
from model_registry.cli import registry_cli
try:
    registry_cli(sys.argv[1:], standalone_mode=False)
finally:
    print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
"""


def register_peak_rss(model: Path, work: Path) -> float:
    """Peak RSS (MiB) of `mofe registry register` in its own process (local store). Read as
    the child's own VmHWM: Linux carries the parent's high-water mark into a forked child's
    ru_maxrss across exec, which would report this (large) benchmark process instead."""
    out = subprocess.run([sys.executable, "-c", _PEAK, "--registry", str(work / "rss"),
                          "register", str(model), "--name", "rss"], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    shutil.rmtree(work / "rss", ignore_errors=True)
    return int(out.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1792)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of the set-ups, order reversed every other round (ABBA)")
    ap.add_argument("--metadata", default="postgresql",
                    help="postgresql (default: a throw-away cluster), sqlite (no pg-s3), or "
                    "a postgresql:// URL of an existing database")
    opts = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log
    work = Path(tempfile.mkdtemp(prefix="mofe-dedup-bench-"))
    s3 = MotoS3()
    os.environ.update(s3.environ())
    kinds = ("local", "s3") if opts.metadata == "sqlite" else ("local", "s3", "pg-s3")
    pg = None
    try:
        if "pg-s3" in kinds:
            pg = Postgres(None if opts.metadata == "postgresql" else opts.metadata)
        variants, unrelated = build_models(work / "models", opts)
        models = [*variants, unrelated]
        sizes = [dir_bytes(m) for m in models]
        one = sizes[0]
        print(f"models: 3 variants + 1 unrelated, {opts.layers} layers, hidden {opts.hidden}, "
              f"{opts.experts} experts, bf16; one checkpoint {one / 2**20:.1f} MiB", flush=True)
        results: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for r in range(opts.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                res = run_setup(kind, models, work, s3, pg, f"r{r}")
                results[kind].append(res)
                print(f"round {r} {kind:5s} register {[round(x, 2) for x in res['register_s']]}"
                      f" resolve {[round(x, 3) for x in res['resolve_s']]}", flush=True)
        rss = register_peak_rss(models[0], work)
    finally:
        if pg is not None:
            pg.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)

    print("\n| set-up | stored: 3 variants | ÷ one checkpoint | stored: 3 variants + "
          "unrelated | sum of the 4 checkpoints | register (per model, median, range) | "
          "resolve (per model) |")
    print("|---|---:|---:|---:|---:|---|---|")
    for kind, runs in results.items():
        after3 = runs[0]["stored_after"][2]
        after4 = runs[0]["stored_after"][3]
        reg = [x for run in runs for x in run["register_s"]]
        res = [x for run in runs for x in run["resolve_s"]]
        label = {"local": "SQLite + local folder", "s3": "SQLite + S3 (moto)",
                 "pg-s3": "PostgreSQL + S3 (moto)"}[kind]
        print(f"| {label} | {after3 / 2**20:.1f} MiB | **{after3 / one:.3f}×** | "
              f"{after4 / 2**20:.1f} MiB | {sum(sizes) / 2**20:.1f} MiB | {_spread(reg)} | "
              f"{_spread(res, 3)} |")
    print(f"\nPeak RSS of `mofe registry register` (one variant, own process): {rss:.0f} MiB "
          f"for a {one / 2**20:.0f} MiB checkpoint")
    for kind in kinds[1:]:
        run = results[kind][0]
        print(f"\n{kind} second node: {run['downloaded']} objects downloaded for 4 versions, "
              f"cache {run['node_cache_bytes'] / 2**20:.1f} MiB on disk (each shared blob once)")
    p = paper_figure()
    print("\nOn paper: 4 TinyLlama-shaped experts (hidden 2048, intermediate 5632, 22 layers, "
          "vocab 32000, 32 heads / 4 KV heads), bf16")
    print("| | params | bytes |\n|---|---:|---:|")
    print(f"| own tensors per version | {p['own_params'] / 1e6:.1f} M | "
          f"{p['own_params'] * 2 / GiB:.2f} GiB |")
    print(f"| expert tensors (shared) | {p['expert_params'] / 1e6:.1f} M | "
          f"{p['expert_params'] * 2 / GiB:.2f} GiB |")
    print(f"| one checkpoint | | {p['one_bytes'] / GiB:.2f} GiB |")
    print(f"| 10 variants as full copies | | {p['copies_bytes'] / GiB:.2f} GiB (10.00×) |")
    print(f"| 10 variants, experts stored once | | {p['dedup_bytes'] / GiB:.2f} GiB "
          f"(**{p['dedup_bytes'] / p['one_bytes']:.2f}×** one checkpoint) |")
    print(f"| 3 variants, experts stored once | | {p['dedup_3_bytes'] / GiB:.2f} GiB "
          f"({p['dedup_3_bytes'] / p['one_bytes']:.2f}×) |")


if __name__ == "__main__":
    main()
