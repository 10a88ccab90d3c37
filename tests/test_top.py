"""``python -m gameguard top``: against a real Prometheus endpoint on loopback and against
this process's registry, for a bounded number of frames."""
from __future__ import annotations

import io
import socket
import subprocess
import sys
from typing import Dict, Iterator, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, start_http_server

import gameguard as gg
from gameguard import top
from gameguard.metrics import PrometheusCollector


def lines_of(frame: str) -> Dict[str, List[str]]:
    """Frame rows by name: the columns after the type and name."""
    return {cols[1]: cols[2:] for cols in (line.split() for line in frame.splitlines()[1:])}


class Traffic:
    """Guards on a ManualClock: a breaker that opened, a limiter, a cache."""

    def __init__(self, edge: str = "edge") -> None:
        clock = gg.ManualClock()
        self.breaker = gg.CircuitBreaker(edge, consecutive_failures=2, clock=clock)
        self.limiter = gg.TokenBucket(1, 3, clock=clock, name="casts")
        self.cache: gg.HotKeyCache[int] = gg.HotKeyCache(maxsize=8, clock=clock, name="profiles")
        self.ok = self.limiter(lambda: None)
        self.objects = [self.breaker, self.limiter, self.cache]

    def first(self) -> None:
        @self.breaker
        def fail() -> None:
            raise ValueError()
        for _ in range(2):
            with pytest.raises(ValueError):
                fail()
        with pytest.raises(gg.CircuitOpenError):
            fail()
        self.cache.get_or_load(1, lambda k: k)
        for _ in range(3):
            self.cache.get(1)

    def more(self) -> None:
        for _ in range(5):  # 3 admitted, 2 rejected
            try:
                self.ok()
            except gg.RateLimitExceeded:
                pass
        self.cache.get(2)


@pytest.fixture
def endpoint() -> Iterator[Tuple[str, Traffic]]:
    traffic = Traffic()
    reg = CollectorRegistry()
    reg.register(PrometheusCollector(lambda: traffic.objects))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", traffic
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_top_reads_a_running_endpoint(endpoint: Tuple[str, Traffic]) -> None:
    url, traffic = endpoint
    traffic.first()
    out = io.StringIO()
    sleeps: List[float] = []

    def between(seconds: float) -> None:  # traffic between two refreshes, no real wait
        sleeps.append(seconds)
        traffic.more()

    assert top.run(url, interval=0.25, iterations=2, out=out, sleep=between) == 0
    assert sleeps == [0.25]
    first, second = out.getvalue().split("\n\n")
    rows = lines_of(first)
    assert rows["edge"] == ["open", "2.0", "1.0"]      # totals: 2 calls ran, 1 rejected
    assert rows["casts"] == ["-", "0.0", "0.0"]
    assert rows["profiles"] == ["-", "4.0", "75.0"]    # 1 miss, 3 hits
    assert "CALLS/s" in second
    rates = lines_of(second)
    assert float(rates["casts"][1]) > 0 and float(rates["casts"][2]) > 0
    assert float(rates["edge"][1]) == 0.0 and rates["edge"][0] == "open"
    assert rates["profiles"][2] == "0.0"               # the one read between was a miss


def test_render_gives_rates_between_two_readings() -> None:
    def reading(ok: float, rejected: float, hits: float, misses: float) -> top.Reading:
        calls = 'gameguard_calls_total{guard="g",type="bulkhead",outcome='
        text = (f'{calls}"successful"}} {ok}\n{calls}"rejected"}} {rejected}\n'
                f'gameguard_cache_requests_total{{cache="c",result="hit"}} {hits}\n'
                f'gameguard_cache_requests_total{{cache="c",result="miss"}} {misses}\n')
        return top.parse(text)
    frame = top.render(reading(30, 10, 90, 10), reading(10, 4, 50, 10), seconds=2.0)
    rows = lines_of(frame)
    assert rows["g"] == ["-", "10.0", "3.0"]
    assert rows["c"] == ["-", "20.0", "100.0"]


def test_a_breaker_state_goes_to_the_breaker_not_to_its_namesakes() -> None:
    text = "".join(
        f'gameguard_calls_total{{guard="battle:*",type="{kind}",outcome="successful"}} 5\n'
        for kind in ("circuit_breaker", "bulkhead"))
    text += 'gameguard_circuit_breaker_state{guard="battle:*",state="open"} 1\n'
    frame = top.render(top.parse(text))
    states = {line.split()[0]: line.split()[2] for line in frame.splitlines()[1:]}
    assert states == {"circuit_breaker": "open", "bulkhead": "-"}


def test_top_reads_this_process_registry() -> None:
    traffic = Traffic(edge="local-edge")  # a name no other live object has
    traffic.first()
    out = io.StringIO()
    assert top.run(None, iterations=1, out=out) == 0
    rows = lines_of(out.getvalue())
    assert rows["local-edge"] == ["open", "2.0", "1.0"]
    assert "profiles" in rows


def test_parse_reads_escaped_labels_and_skips_comments() -> None:
    got = top.parse('# HELP x y\nx_total{a="q\\"uote",b="back\\\\slash"} 3\ny 4.5 1700000000\n')
    assert got == {("x_total", (("a", 'q"uote'), ("b", "back\\slash"))): 3.0, ("y", ()): 4.5}


def test_an_unreachable_endpoint_is_reported() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = io.StringIO()
    assert top.run(f"http://127.0.0.1:{port}/metrics", iterations=1, out=out) == 1
    assert "cannot read" in out.getvalue()


def test_the_cli_runs_top_once() -> None:
    done = subprocess.run([sys.executable, "-m", "gameguard", "top", "--once"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[:3] == ["TYPE", "NAME", "STATE"]
    bad = subprocess.run([sys.executable, "-m", "gameguard", "top", "--iterations", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be an integer >= 1" in bad.stderr
