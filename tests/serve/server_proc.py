"""Run `mofe serve` as a real subprocess and shut it down the way an orchestrator does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

MOFE = str(Path(sys.executable).with_name("mofe"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MofeServer:
    def __init__(self, ref: str | Path, log: Path, api_key: str | None = None,
                 extra: list[str] = (), env: dict[str, str] | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log = log
        cmd = [MOFE, "serve", str(ref), "--port", str(self.port), *extra]
        if api_key:
            cmd += ["--api-key", api_key]
        full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                    **(env or {})}
        self._log_fh = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    def _track(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mofe serve exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            self._track()
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as r:
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
        """SIGTERM the server; return descriptions of processes still alive after it exits
        (killed afterwards, so a failing test leaves no orphans either)."""
        self._track()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=10)
        leftovers = []
        for p in alive:
            try:
                leftovers.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self._log_fh.close()
        return leftovers
