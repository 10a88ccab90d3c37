"""The scenario proof, compressed (``--quick``): every figure computed, the guarded run
isolates the CPU fault better than the unguarded one, and loses no saga nor applies an effect
twice; bad arguments are clear errors; Ctrl-C stops every child process."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gameguard.scenario.report import OTHERS

FIGURES = ("fault_isolation_pct", "p99_ms", "cold_start_ms", "sagas_lost",
           "effects_applied_twice", "loads_per_hot_key_expiry", "over_budget_admitted")


def scenario(*args: str, timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gameguard", "scenario", *args],
                          capture_output=True, text=True, timeout=timeout)


def running_with(text: str) -> list[str]:
    """Command lines of live processes that mention ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                found.append(cmd)
    return found


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("scenario")
    started = time.monotonic()
    done = scenario("--quick", "--json", str(out / "figures.json"), "--report",
                    str(out / "report"))
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads((out / "figures.json").read_text())
    figures["_elapsed"] = time.monotonic() - started
    figures["_out"] = out
    figures["_stdout"] = done.stdout
    return figures


def test_every_figure_is_computed(quick: dict) -> None:
    for mode in ("guarded", "unguarded"):
        for key in FIGURES:
            assert quick[mode][key] is not None, (mode, key)


#: the guarded run's isolation never falls below this (the guards' construction, below)
ISOLATION_FLOOR = 85.0
#: the share of chat and auction requests an unguarded gateway refuses for want of a worker
#: while battle is saturated, at least (the fault spreading, below)
SPREAD_FLOOR = 0.10


def test_guarded_isolates_the_cpu_fault_better(quick: dict) -> None:
    """Battle's CPU saturated spreads to chat and auction, which never call battle, only
    through the gateways' 32 workers: unguarded, each gateway gets about 25 battle-bound
    requests a second (match, teleport) that battle no longer answers, each holding a worker
    up to its 2 s deadline (50 wanted, 32 there), so the workers fill and chat and auction
    are refused with RESOURCE_EXHAUSTED. Guarded, the bulkhead holds battle to 8 workers and
    the breaker fails its calls fast, so chat and auction keep the workers they need: their
    success stays what it was in the baseline, less what the host's own load takes. (Battle
    spins at the lowest CPU priority, as a container at its quota: the fault does not take
    the others' share of the shared host's two cores, which no guard could give back.)

    So three checks, none a comparison of two noisy timings alone: the unguarded run refuses
    at least SPREAD_FLOOR of them for want of a worker; the guarded run keeps at least
    ISOLATION_FLOOR % isolation; and guarded beats unguarded. Over 19 quick runs on this
    project's 2-core machine under other sessions' load (load averages 2.5-15): unguarded
    31-77 %, refusing 20-60 % of them; guarded 89-100 % in 15 runs. In the other four the
    host starved the guarded gateways (a slow social refused by its own bulkhead and
    breaker, a failing baseline) and it fell to 25-73 %: a host that busy fails this test,
    as no guard gives a process CPU it is not scheduled (docs/scenario.md).
    """
    g, u = quick["guarded"], quick["unguarded"]
    cpu = u["phases"]["cpu-saturated"]
    sent = sum(cpu[op]["n"] for op in OTHERS)  # players' requests (the abusers' apart)
    refused = sum(cpu[op]["failures"].get("RESOURCE_EXHAUSTED", 0) for op in OTHERS)
    assert refused >= SPREAD_FLOOR * sent, (refused, sent)
    assert g["fault_isolation_pct"] >= ISOLATION_FLOOR, g["fault_isolation_pct"]
    assert g["fault_isolation_pct"] > u["fault_isolation_pct"]


def test_guarded_loses_no_saga_and_applies_nothing_twice(quick: dict) -> None:
    g = quick["guarded"]
    assert g["sagas_started"] > 0
    assert g["sagas_lost"] == 0
    assert g["effects_applied_twice"] == 0
    assert g["sagas_committed"] + g["sagas_compensated"] == g["sagas_started"]


def test_the_guarded_run_holds_player_budgets_and_coalesces_hot_loads(quick: dict) -> None:
    g, u = quick["guarded"], quick["unguarded"]
    assert g["over_budget_admitted"] < u["over_budget_admitted"]
    assert g["loads_per_hot_key_expiry"] < u["loads_per_hot_key_expiry"] / 5


def test_the_guarded_nodes_metrics_are_in_the_report(quick: dict) -> None:
    """Read off each node's /metrics: the gateways' breakers and bulkheads refuse calls to
    battle while it is saturated (the proof that isolation is the guards' doing), the hot
    item is served from the cache; the unguarded run has no guards to read."""
    guards = quick["guarded"]["guards"]
    assert set(guards) == {"gateway-0", "gateway-1", "matchmaking", "battle", "social",
                           "payment"}
    for gw in ("gateway-0", "gateway-1"):
        cpu = guards[gw]["phases"]["cpu-saturated"]
        assert cpu is not None and sum(cpu["rejected"].get("battle:*", {}).values()) > 0, cpu
        assert guards[gw]["total"]["cache_hit_pct"]["auction-items"] > 50
    assert quick["unguarded"]["guards"] is None
    assert "guards of the guarded run" in quick["_stdout"]


def test_report_has_the_table_and_charts(quick: dict) -> None:
    report = quick["_out"] / "report"
    page = (report / "index.html").read_text()
    assert "fault isolation" in page and "success.png" in page and "p99.png" in page
    for png in ("success.png", "p99.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "guarded" in quick["_stdout"] and "unguarded" in quick["_stdout"]


def test_quick_finishes_within_a_minute(quick: dict) -> None:
    assert quick["_elapsed"] < 90, quick["_elapsed"]  # 60 s on a quiet machine; CI is one


def test_unknown_fault_is_a_clear_error() -> None:
    done = scenario("--quick", "--faults", "cpu,meteor")
    assert done.returncode != 0
    assert "unknown fault 'meteor'" in done.stderr


def test_a_dsn_that_does_not_answer_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    done = scenario("--quick", "--dsn", f"postgresql://nobody@127.0.0.1:{port}/none")
    assert done.returncode != 0
    assert "DSN does not answer" in done.stderr


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = scenario("--quick", "--ports", str(port))
    assert done.returncode != 0
    assert f"port {port}" in done.stderr and "taken" in done.stderr


def started(work: Path) -> tuple[subprocess.Popen[str], str]:
    """A --quick run, once it says its cluster is up (every node answered): the process and
    the line that says how to watch it."""
    # Ctrl-C as at a terminal, even when this session runs in the background (SIGINT ignored)
    proc = subprocess.Popen([sys.executable, "-m", "gameguard", "scenario", "--quick",
                             "--workdir", str(work), "--report", str(work / "report")],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line.startswith("scenario: watch the guards live:"):
            return proc, line
    proc.kill()
    raise AssertionError(f"the cluster never came up: {proc.communicate(timeout=60)[0]}")


def stopped_cleanly(proc: subprocess.Popen[str], sig: int, work: Path) -> None:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert "interrupted" in out
    assert running_with(str(work)) == [], "children still running"
    assert proc.returncode == 130


def test_top_watches_a_live_node_and_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    proc, announced = started(tmp_path / "work")
    url = re.search(r"top --url (\S+) \(gateway-0", announced)
    assert url, announced
    top = subprocess.run([sys.executable, "-m", "gameguard", "top", "--once", "--url",
                          url.group(1)], capture_output=True, text=True, timeout=30)
    assert top.returncode == 0, top.stdout + top.stderr
    for guard in ("battle:*", "payment:*", "players", "auction-items"):
        assert guard in top.stdout, top.stdout
    stopped_cleanly(proc, signal.SIGINT, tmp_path / "work")


def test_sigterm_stops_every_child_too(tmp_path: Path) -> None:
    proc, _ = started(tmp_path / "work")
    stopped_cleanly(proc, signal.SIGTERM, tmp_path / "work")
