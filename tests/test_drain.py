"""Drain: admits until started, then DrainingError; wait / wait_async until the threads and
tasks in flight are done (or the timeout); signal handlers in sync and asyncio form, in this
process and in a real server process sent SIGTERM; the kernel's twins in lockstep."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from test_bulkhead import SAFETY, wait_until
from gameguard import Bulkhead, ConfigurationError, DrainingError, RejectedError, pipeline
from gameguard._registry import registry
from gameguard.drain import Drain



def test_admits_until_started_then_rejects(twin):
    drain = Drain(name="server")
    assert drain in registry()
    assert (drain.state, drain.in_flight) == ("serving", 0)

    @drain
    def handler(x):
        assert drain.in_flight == 1
        return x

    assert handler(3) == 3
    drain.start()
    drain.start()  # idempotent
    assert drain.state == "draining"
    with pytest.raises(DrainingError) as info:
        handler(4)
    assert isinstance(info.value, RejectedError)
    assert (info.value.name, info.value.retry_after) == ("server", None)
    with pytest.raises(DrainingError):
        with drain:
            raise AssertionError("must not run")
    assert drain.snapshot() == {"name": "server", "state": "draining", "in_flight": 0}
    assert drain.wait(0) is True


def test_default_names_are_stable():
    a, b = Drain(), Drain()
    assert a.name.startswith("drain") and b.name.startswith("drain-") and a.name != b.name


def test_in_a_pipeline_outermost(twin):
    drain, bulkhead = Drain(), Bulkhead(1)
    guarded = pipeline(drain, bulkhead)
    with guarded:
        assert (drain.in_flight, bulkhead.in_flight) == (1, 1)
    drain.start()
    with pytest.raises(DrainingError):
        with guarded:
            pass
    assert (drain.in_flight, bulkhead.in_flight) == (0, 0)


def test_wait_for_threads_in_flight(twin):
    drain = Drain()
    release = threading.Event()
    inside = threading.Semaphore(0)

    @drain
    def work():
        inside.release()
        assert release.wait(SAFETY)
        return "done"

    results = []
    threads = [threading.Thread(target=lambda: results.append(work())) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in threads:
        assert inside.acquire(timeout=SAFETY)
    drain.start()
    assert drain.in_flight == 4
    assert drain.wait(timeout=0) is False
    assert drain.wait(timeout=0.01) is False
    with pytest.raises(DrainingError):
        work()
    waited = []
    waiter = threading.Thread(target=lambda: waited.append(drain.wait(SAFETY)))
    waiter.start()
    release.set()
    waiter.join(SAFETY)
    assert waited == [True] and drain.in_flight == 0
    for t in threads:
        t.join(SAFETY)
    assert results == ["done"] * 4


def test_wait_async_for_tasks_in_flight(twin):
    async def main():
        drain = Drain()
        release = asyncio.Event()
        started = []

        @drain
        async def work(i):
            started.append(i)
            await release.wait()
            return i

        async def block(i):
            async with drain:
                started.append(i)
                await release.wait()
                return i

        tasks = [asyncio.create_task(work(i)) for i in range(3)] + \
                [asyncio.create_task(block(i)) for i in range(3, 6)]
        while len(started) < 6:
            await asyncio.sleep(0)
        drain.start()
        assert drain.in_flight == 6
        assert await drain.wait_async(timeout=0) is False
        assert await drain.wait_async(timeout=0.01) is False
        with pytest.raises(DrainingError):
            await work(9)
        waiting = asyncio.create_task(drain.wait_async(SAFETY))
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.wait_for(waiting, SAFETY) is True
        assert sorted(await asyncio.gather(*tasks)) == list(range(6))
        assert drain._kernel.waiters == 0
    asyncio.run(main())


def test_async_waiter_woken_by_a_thread(twin):
    drain = Drain()
    release = threading.Event()
    inside = threading.Event()

    def work():
        with drain:
            inside.set()
            assert release.wait(SAFETY)

    t = threading.Thread(target=work)
    t.start()
    assert inside.wait(SAFETY)

    async def main():
        drain.start()
        waiting = asyncio.create_task(drain.wait_async())
        await asyncio.sleep(0)
        release.set()
        return await asyncio.wait_for(waiting, SAFETY)
    assert asyncio.run(main()) is True
    t.join(SAFETY)


def test_wait_async_cancelled_leaves_nothing(twin):
    async def main():
        drain = Drain()
        release = asyncio.Event()

        async def work():
            async with drain:
                await release.wait()
        task = asyncio.create_task(work())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(drain.wait_async())
        await asyncio.sleep(0)
        assert drain._kernel.waiters == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert drain._kernel.waiters == 0 and drain._async_waiters == []
        release.set()
        await task
    asyncio.run(main())


def test_timeout_is_checked():
    with pytest.raises(ConfigurationError, match="timeout"):
        Drain().wait(-1)
    with pytest.raises(ConfigurationError, match="timeout"):
        asyncio.run(Drain().wait_async("soon"))


# -- signals -----------------------------------------------------------------------------------
def refusal_off_main(call):
    """The ConfigurationError message ``call()`` raises on a thread other than the main one."""
    errors = []

    def off_main():
        try:
            call()
        except ConfigurationError as exc:
            errors.append(str(exc))
    t = threading.Thread(target=off_main)
    t.start()
    t.join(SAFETY)
    assert len(errors) == 1, errors
    return errors[0]


def test_sync_signal_handlers_start_the_drain_and_restore(twin):
    drain = Drain()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen = []
    restore = drain.install_signal_handlers(then=seen.append)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: drain.state == "draining", "the SIGTERM handler")
        assert seen == [signal.SIGTERM]
    finally:
        restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_then_that_raises_is_logged(caplog):
    drain = Drain()
    restore = drain.install_signal_handlers([signal.SIGUSR2], then=lambda signum: 1 / 0)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: drain.state == "draining", "the SIGUSR2 handler")
    finally:
        restore()
    assert "raised" in caplog.text and "ZeroDivisionError" in caplog.text


def test_asyncio_signal_handlers_use_the_loop(twin):
    async def main():
        drain = Drain()
        loop = asyncio.get_running_loop()
        restore = drain.install_signal_handlers([signal.SIGUSR1], loop=loop)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = loop.time() + SAFETY
            while drain.state != "draining":
                assert loop.time() < deadline, "the loop's signal handler never ran"
                await asyncio.sleep(0.001)
        finally:
            restore()
        assert not loop.remove_signal_handler(signal.SIGUSR1)  # already removed
    asyncio.run(main())


def test_sync_handlers_need_the_main_thread():
    assert "main thread" in refusal_off_main(lambda: Drain().install_signal_handlers())
    with pytest.raises(ConfigurationError, match="then"):
        Drain().install_signal_handlers(then=5)


SERVER = textwrap.dedent("""
    import asyncio, sys
    from gameguard.drain import Drain
    from gameguard.errors import DrainingError

    async def main():
        drain = Drain(name="server")
        drain.install_signal_handlers(loop=asyncio.get_running_loop())
        finished = []

        @drain
        async def handler(i):
            await asyncio.sleep(0.3)
            finished.append(i)

        tasks = [asyncio.create_task(handler(i)) for i in range(5)]
        await asyncio.sleep(0)
        print("serving", drain.in_flight, flush=True)
        while drain.state == "serving":
            await asyncio.sleep(0.01)
        try:
            await handler(99)
        except DrainingError:
            print("rejected new call", flush=True)
        ok = await drain.wait_async(timeout=20)
        await asyncio.gather(*tasks)
        print("drained", ok, sorted(finished), flush=True)

    asyncio.run(main())
""")


def test_sigterm_drains_a_real_asyncio_server():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["serving", "5"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=SAFETY)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(SAFETY)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["rejected new call", "drained True [0, 1, 2, 3, 4]"]


# -- the kernel's twins ------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.sampled_from(["enter", "exit", "start", "wait"]), max_size=40))
def test_kernel_twins_decide_alike(ops):
    logs = []
    for mod in both_twins("drain"):
        k = mod.DrainKernel()
        held, log = [], []
        for op in ops:
            if op == "enter":
                token = k.enter(1.0)
                log.append(token)
                if token >= 0:
                    held.append(token)
            elif op == "exit" and held:
                k.exit(held.pop(), 2.0, 1.0, 0)
                log.append(k.pending)
                k.pending = 0
            elif op == "start":
                k.start()
            elif op == "wait":
                k.waiters = 1 - k.waiters
            log.append((k.in_flight, k.draining, k.waiters))
        logs.append(log)
        with pytest.raises(ValueError):
            k.enter(float("nan"))
    assert logs[0] == logs[1]
