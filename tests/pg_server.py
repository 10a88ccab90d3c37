"""A throwaway PostgreSQL 15 cluster for the test session: ``initdb`` in a temp dir, started
on a free loopback port, stopped (and deleted) when the session ends.

``pg_server`` (session-scoped) yields a :class:`PgServer`: ``dsn()`` for the superuser,
``dsn(user=..., password=...)`` for other roles, ``sql(...)`` to run admin statements.
PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user
(``gameguard``, created if missing, else ``nobody``). Missing binaries make the fixture
**fail** with the reason: a test that needs the server never skips.

Also runnable by hand, for the benchmarks and the CLI: ``python tests/pg_server.py`` starts
one, prints its DSN and waits for Enter.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Any, Callable, Iterator, List, Optional

import pytest

SUPERUSER = "postgres"
PASSWORD = "gameguard-test"  # loopback-only throwaway cluster
_START_TIMEOUT = 60


def find_bindir() -> str:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, found robustly:
    ``$PG_BINDIR``, ``pg_config --bindir``, ``pg_ctl`` on PATH (symlinks resolved), then
    Debian's ``/usr/lib/postgresql/<version>/bin``, newest first."""
    candidates: List[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True,
                                             text=True, timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(os.path.dirname(os.path.realpath(pg_ctl)))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit()
                         else 0, reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, exe), os.X_OK) for exe in ("initdb", "pg_ctl",
                                                                     "postgres")):
            return d
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: looked in "
        f"{candidates or 'nothing (no pg_config, no pg_ctl on PATH, no /usr/lib/postgresql)'};"
        " install PostgreSQL 15 (Debian: apt-get install postgresql-15) or set PG_BINDIR")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> Optional[pwd.struct_passwd]:
    """``None`` when not root (the server runs as us); else an unprivileged account."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("gameguard")
    except KeyError:
        pass
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "gameguard"], check=True, capture_output=True,
                       timeout=30)
        return pwd.getpwnam("gameguard")
    except (OSError, subprocess.SubprocessError, KeyError):
        return pwd.getpwnam("nobody")


class PgServer:
    """One running cluster. ``port``, ``host`` (127.0.0.1); ``dsn(...)`` builds a DSN."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.user = _server_user()
        self.root = tempfile.mkdtemp(prefix="gameguard-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.host = "127.0.0.1"
        self.port = 0
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--pwfile", pwfile,
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                  "--no-instructions", "--no-sync", timeout=120)
        os.unlink(pwfile)

    def _run(self, exe: str, *args: str, timeout: float) -> str:
        kw: dict[str, Any] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C", HOME=self.root)
        r = subprocess.run([os.path.join(self.bindir, exe), *args], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=self.root, **kw)
        if r.returncode != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log, errors="replace") as f:
                    log = f.read()[-3000:]
            raise RuntimeError(f"{exe} {' '.join(args)} failed ({r.returncode}): "
                               f"{r.stdout}{r.stderr}{log}")
        return r.stdout

    def start(self) -> "PgServer":
        last: Optional[Exception] = None
        for _ in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            opts = (f"-p {self.port} -c listen_addresses={self.host} -k {self.root} "
                    f"-c max_connections=200 -c shared_buffers=64MB")
            try:
                self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t",
                          str(_START_TIMEOUT), "-o", opts, "start", timeout=_START_TIMEOUT + 10)
                return self
            except RuntimeError as exc:
                last = exc
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop",
                      timeout=40)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, user: str = SUPERUSER, password: Optional[str] = PASSWORD,
            dbname: str = "postgres") -> str:
        pw = f" password={password}" if password is not None else ""
        return (f"host={self.host} port={self.port} dbname={dbname} user={user}{pw} "
                f"connect_timeout=10")

    def sql(self, *statements: str, dbname: str = "postgres") -> List[Any]:
        """Run ``statements`` as the superuser (autocommit); the last one's rows, if any."""
        import psycopg
        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True) as conn:
            rows: List[Any] = []
            for s in statements:
                cur = conn.execute(s)  # type: ignore[call-overload]
                rows = cur.fetchall() if cur.description else []
            return rows


def in_threads(n: int, fn: Callable[[int], Any], timeout: float = 60.0) -> List[BaseException]:
    """Run ``fn(i)`` on ``n`` threads at once; what they raised (bounded wait)."""
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # reported to the caller
            errors.append(exc)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in ts), "threads still running"
    return errors


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer().start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot start the test PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    s = PgServer().start()
    try:
        print(s.dsn(), flush=True)
        input("PostgreSQL is running; press Enter to stop it\n")
    finally:
        s.stop()
