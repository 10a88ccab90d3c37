"""rules.watch(): reloads on a file change once the file is stable, and on SIGHUP; a failed
reload keeps the rules in force and the watcher alive."""
from __future__ import annotations

import os
import signal
import time

import pytest

from test_bulkhead import wait_until
from test_drain import refusal_off_main
from gameguard import ConfigurationError
from gameguard.rules import Rules



def rules_file(path, rate):
    path.write_text(f"[resource.a]\nlimit = {{ rate = {rate} }}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # a new mtime even on coarse clocks


def rate(rules):
    return rules.rule("a").limit.rate


def test_poll_reloads_once_the_file_is_stable(tmp_path):
    path = tmp_path / "rules.toml"
    rules_file(path, 1)
    rules = Rules.load(path)
    with rules.watch(interval=3600, sighup=False) as watcher:  # the thread never polls here
        assert watcher.poll() is False  # nothing changed
        rules_file(path, 2)
        assert watcher.poll() is False  # changed since the last look: maybe still written
        assert rate(rules) == 1.0
        assert watcher.poll() is True  # unchanged for a whole interval: read
        assert rate(rules) == 2.0
        assert watcher.poll() is False


def test_half_written_file_is_reported_once_and_the_old_set_stays(tmp_path):
    path = tmp_path / "rules.toml"
    rules_file(path, 1)
    rules = Rules.load(path)
    with rules.watch(interval=3600, sighup=False) as watcher:
        path.write_text("[resource.a]\nlimit = { rate = ")
        watcher.poll()
        assert watcher.poll() is True
        assert (rate(rules), rules.reloads_failed, rules.last_reload_successful) == \
            (1.0, 1, False)
        assert watcher.poll() is False and rules.reloads_failed == 1  # not retried per poll
        rules_file(path, 3)
        watcher.poll()
        watcher.poll()
        assert (rate(rules), rules.last_reload_successful) == (3.0, True)


def test_watch_thread_picks_up_a_change(tmp_path):
    path = tmp_path / "rules.toml"
    rules_file(path, 1)
    rules = Rules.load(path)
    watcher = rules.watch(interval=0.01, sighup=False)
    try:
        assert watcher.running
        rules_file(path, 5)
        wait_until(lambda: rate(rules) == 5.0, "the watcher to reload")
        path.write_text("not toml [")
        wait_until(lambda: rules.reloads_failed == 1, "the failed reload")
        assert watcher.running and rate(rules) == 5.0
        rules_file(path, 6)
        wait_until(lambda: rate(rules) == 6.0, "the watcher to go on after a failure")
    finally:
        watcher.stop()
    assert not watcher.running


def test_sighup_reloads_and_stop_restores_the_handler(tmp_path):
    path = tmp_path / "rules.toml"
    rules_file(path, 1)
    rules = Rules.load(path)
    previous = signal.getsignal(signal.SIGHUP)
    watcher = rules.watch(interval=3600)  # only SIGHUP can trigger a reload here
    try:
        assert signal.getsignal(signal.SIGHUP) is not previous
        rules_file(path, 7)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: rate(rules) == 7.0, "the SIGHUP reload")
        assert rules.reloads_succeeded == 1
    finally:
        watcher.stop()
    assert signal.getsignal(signal.SIGHUP) is previous


def test_sighup_works_for_any_source():
    version = {"rate": 1}
    rules = Rules(lambda: {"resource": {"a": {"limit": {"rate": version["rate"]}}}})
    with rules.watch(interval=3600):
        version["rate"] = 9
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: rate(rules) == 9.0, "the SIGHUP reload")


def test_sighup_needs_the_main_thread(tmp_path):
    rules = Rules()
    assert "main thread" in refusal_off_main(lambda: rules.watch(interval=1.0))
    with pytest.raises(ConfigurationError, match="interval"):
        rules.watch(interval=0, sighup=False)
