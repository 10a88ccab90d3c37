"""Real ``redis-server`` processes for the Redis tests, on free loopback ports.

The session starts them and stops them at its end: ``redis_server`` (one plain server, shared),
``redis_factory`` (more servers with their own settings: a password, scripting disabled, one
to stop and restart mid-test) and ``redis_cluster`` (three masters, all 16384 slots). Without
``redis-server`` on PATH every one of them fails, saying to run ``make redis``: never a skip.
"""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

START_TIMEOUT = 10.0  # seconds a server gets to answer after its start


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: the Redis tests need a real server; run "
                    "`make redis` (installs Debian's redis-server)", pytrace=False)
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node its bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        if _port_free(port) and (not cluster or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


def answers(port: int) -> bool:
    """The server on ``port`` answers PING (+PONG, or an error such as NOAUTH: it is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, with ``extra`` config lines; ``stop``/``start``
    keep its port, so clients reconnect to the same address."""

    def __init__(self, workdir: Path, extra: Sequence[str] = (), cluster: bool = False) -> None:
        self.port = free_port(cluster)
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "redis.conf"
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", 'save ""',
            "appendonly no", "daemonize no", "logfile redis.log", *extra]) + "\n")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen([binary("redis-server"), str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log")
                raise RuntimeError(f"redis-server on port {self.port} did not start: "
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., RedisServer]]:
    """``make(*config_lines)`` starts one more server; all stop at the session's end."""
    binary("redis-server")
    made: List[RedisServer] = []
    root = tmp_path_factory.mktemp("redis")

    def make(*extra: str, cluster: bool = False) -> RedisServer:
        server = RedisServer(root, extra, cluster)
        made.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in made:
            server.stop()


@pytest.fixture(scope="session")
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """The shared plain server (tests flush it or use their own key prefix)."""
    return redis_factory()


@pytest.fixture(scope="session")
def redis_cluster(redis_factory: Callable[..., RedisServer]) -> List[RedisServer]:
    """A 3-master Redis Cluster on loopback (no replicas), every slot served."""
    nodes = [redis_factory("cluster-enabled yes", "cluster-config-file nodes.conf",
                           "cluster-node-timeout 5000", cluster=True) for _ in range(3)]
    subprocess.run([binary("redis-cli"), "--cluster", "create",
                    *[f"127.0.0.1:{n.port}" for n in nodes],
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 20
    for node in nodes:
        while b"cluster_state:ok" not in subprocess.run(
                [binary("redis-cli"), "-p", str(node.port), "cluster", "info"],
                capture_output=True, timeout=10).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {node.port} never reached cluster_state:ok")
            time.sleep(0.05)
    return nodes
