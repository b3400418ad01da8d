"""Run a server as a subprocess and stop it the way an orchestrator does.

The one harness for everything that starts `mofe serve` (tests, benchmarks, scripts/demo.py):
start with a port, wait for an HTTP health path, SIGTERM, then report everything a clean
shutdown must not leave behind: a server still running after the grace period, live child
processes, new entries in /dev/shm (shared memory and semaphores of the engine's processes)
and vLLM's "force killing" log lines.

`MofeServer` adds no VLLM_CPU_KVCACHE_SPACE: the server sizes its own KV cache, as for a user.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

MOFE = str(Path(sys.executable).with_name("mofe"))
SHM = Path("/dev/shm")


def shm_entries() -> set[str]:
    return {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()


def shm_mapped_by(pids) -> set[str]:
    """/dev/shm entries (shared memory, named semaphores) that these processes map now:
    attributes entries to a server's own processes, not to whatever else ran meanwhile
    (e.g. a test that SIGKILLs another server's engine on purpose)."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as fh:
                for line in fh:
                    fields = line.split(maxsplit=5)  # anonymous mappings have no path
                    path = fields[5].strip() if len(fields) == 6 else ""
                    if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                        names.add(path.removeprefix("/dev/shm/"))
        except OSError:
            pass
    return names


def shm_left_behind(names: set[str], timeout: float = 10) -> list[str]:
    """Those of `names` still in /dev/shm after `timeout` seconds (a resource tracker may
    unlink them a moment after its process exits)."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(names & shm_entries())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def force_kill_lines(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if "force killing" in line]


def free_port(preferred: int = 0) -> int:
    """`preferred` if nothing listens on it, else any free port."""
    for port in ((preferred, 0) if preferred else (0,)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


class ServerProcess:
    """Any HTTP server command line on 127.0.0.1:`port`, with exactly the environment `env`."""

    def __init__(self, argv: Sequence[str], log: Path, port: int, env: dict[str, str],
                 api_key: str | None = None):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_key = api_key
        self.log = Path(log)
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(list(argv), stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}
        self.shm_used: set[str] = set()

    def _track(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        self.shm_used |= shm_mapped_by([self.proc.pid, *self.seen])

    def wait_ready(self, timeout: float = 600, path: str = "/health") -> None:
        """Poll `path` until it answers 200; stop the server and raise if it exits first or
        `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.proc.args[:2]} exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            self._track()
            try:
                with urllib.request.urlopen(f"{self.base_url}{path}", timeout=2) as r:
                    if r.status == 200:
                        self._track()
                        return
            except OSError:
                pass
            time.sleep(1)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"server not healthy after {timeout}s:\n{tail}")

    def log_tail(self, n: int = 60) -> str:
        if not self._log_fh.closed:
            self._log_fh.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 90) -> list[str]:
        """SIGTERM the server; return what an unclean shutdown left: processes still alive
        after it exits (killed afterwards, so a failing test leaves no orphans either), /dev/shm entries its processes
        mapped, and "force killing" lines in its log."""
        self._track()
        leftovers = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                leftovers.append(f"server {self.proc.pid} still running {timeout}s after SIGTERM")
                self.proc.kill()
                self.proc.wait()
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=10)
        for p in alive:
            try:
                leftovers.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if not self._log_fh.closed:
            self._log_fh.close()
        leftovers += [f"/dev/shm/{name}" for name in shm_left_behind(self.shm_used)]
        return leftovers + force_kill_lines(self.log.read_text(errors="replace"))


class MofeServer(ServerProcess):
    """`mofe serve REF --port PORT [--api-key KEY] *extra`, in the caller's environment plus
    `env`, offline, without VLLM_CPU_KVCACHE_SPACE."""

    def __init__(self, ref: str | Path, log: Path, api_key: str | None = None,
                 extra: Sequence[str] = (), env: dict[str, str] | None = None,
                 port: int | None = None):
        port = port or free_port()
        argv = [MOFE, "serve", str(ref), "--port", str(port), *extra]
        if api_key:
            argv += ["--api-key", api_key]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        full_env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        super().__init__(argv, log, port, full_env, api_key)
