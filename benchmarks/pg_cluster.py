"""A throw-away PostgreSQL cluster: a real server, never a fake. Used by the registry tests
(tests/registry/conftest.py) and benchmarks/registry_dedup.py; it lives here because
benchmarks never import tests/.

initdb in a private temp dir, listening only on a Unix socket in that dir (no TCP port, so
clusters of parallel test sessions cannot collide), superuser `mofe`, trust auth on the
socket. PostgreSQL refuses to run as root; under root the server runs as the `postgres`
user (Debian's package creates it; `nobody` otherwise) via runuser (or setpriv), owning
the temp dir.
fsync is off: the cluster is thrown away, and a killed *client* (what the crash tests
do) is unaffected by it. `stop()` is immediate and removes everything.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "mofe"
_SEARCH = ("/usr/lib/postgresql/*/bin",)  # Debian/Ubuntu: one folder per major version


def find_bindir() -> Path | None:
    """Folder holding initdb and pg_ctl: the newest /usr/lib/postgresql/N/bin, else PATH."""
    found = [Path(d) for pattern in _SEARCH for d in glob.glob(pattern)
             if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "pg_ctl").is_file():
        return Path(initdb).resolve().parent
    return None


def _server_user() -> str | None:
    """The unprivileged user to run the server as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists "
                       "to run the throw-away PostgreSQL server as")


class PostgresCluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.user = _server_user()
        # Not under pytest's basetemp: that is 0700 root-owned, the server user could not
        # enter it. Short path: a Unix socket path is limited to 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="mofe-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._names = itertools.count(1)
        self.started = False
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user and shutil.which("runuser"):
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        elif self.user:  # util-linux without runuser: setpriv does the same
            cmd = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                   *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}"
                               f"\n{proc.stderr}\n{log}")

    def start(self) -> PostgresCluster:
        # A production-like collation (ICU en-US sorts "moe_c" before "moe-a"): the
        # registry's byte-wise order must be its own doing, not this cluster's.
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8", "--locale-provider=icu",
                  "--icu-locale=en-US")
        # The superuser (what the tests connect as) is trusted on the socket; any other role
        # must give its password (tests of secrets from the environment, PGPASSWORD).
        (self.data / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\nlocal all all scram-sha-256\n")
        options = (f"-k {self.dir} -c listen_addresses='' -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")
        self.started = True
        return self

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            self.started = False
            shutil.rmtree(self.dir, ignore_errors=True)

    def conninfo(self, dbname: str, user: str = SUPERUSER) -> str:
        """libpq URL of a database of this cluster (over the Unix socket)."""
        return f"postgresql://{user}@/{dbname}?host={quote(str(self.dir), safe='')}"

    def admin(self):
        import psycopg

        return psycopg.connect(self.conninfo("postgres"), autocommit=True)

    def create_database(self) -> str:
        name = f"registry_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
