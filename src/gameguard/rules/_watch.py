"""Reloading rules when their file changes or on SIGHUP: :class:`Watcher`."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

from ..errors import ConfigurationError
from .._checks import check_positive
from .._log import logger

if TYPE_CHECKING:
    from ._core import Rules

__all__ = ["Watcher"]

Signature = Optional[Tuple[int, int, int]]


def _signature(path: str) -> Signature:
    """What changes when a file is rewritten or replaced: (inode, size, mtime in ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Watcher:
    """Polls the rules' files every ``interval`` seconds on a daemon thread and reloads
    when one changed and then stayed unchanged for a whole interval (a writer still
    busy with the file is not read half way); with ``sighup``, SIGHUP reloads at once.

    Polling needs nothing but ``os.stat`` and works on every file system (watching
    services such as inotify miss changes on some network mounts). ``poll()`` runs one
    check on the calling thread; ``stop()`` ends the thread and restores the previous
    SIGHUP handler. Usable as a context manager.
    """

    def __init__(self, rules: "Rules", paths: Sequence[str], interval: float,
                 sighup: bool) -> None:
        self._rules = rules
        self.interval = check_positive("interval", interval)
        self._paths = tuple(paths)
        self._loaded: Dict[str, Signature] = {p: _signature(p) for p in self._paths}
        self._seen: Dict[str, Signature] = dict(self._loaded)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._hup = False
        self._previous: Any = None
        self._signal: Optional[int] = None
        if sighup:
            self._install_sighup()
        self._thread = threading.Thread(target=self._run, name=f"gameguard-watch-{rules.name}",
                                        daemon=True)
        self._thread.start()

    def _install_sighup(self) -> None:
        import signal

        sig = getattr(signal, "SIGHUP", None)
        if sig is None:  # pragma: no cover - Windows
            raise ConfigurationError("sighup=True needs a platform with SIGHUP; pass "
                                     "sighup=False")
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError("watch(sighup=True) must be called on the main thread "
                                     "(signal handlers live there); pass sighup=False")

        def on_hup(signum: int, frame: Any) -> None:
            self._hup = True  # only flags: the reload runs on the watcher thread
            self._wake.set()

        self._previous = signal.signal(sig, on_hup)
        self._signal = sig

    def poll(self) -> bool:
        """One check: reload if a file changed and has been stable since the last check.
        Returns whether a reload was attempted."""
        with self._lock:
            now = {p: _signature(p) for p in self._paths}
            due = now != self._loaded and now == self._seen
            self._seen = now
            if due:
                self._loaded = now  # a bad file is reported once, not at every poll
        if due:
            self._reload("file change")
        return due

    def _reload(self, why: str) -> None:
        try:
            self._rules.reload()
        except ConfigurationError:
            pass  # counted and logged by reload(); the rules in force stay
        except Exception:  # never let the watcher thread die
            logger().exception("gameguard: %s: reload on %s raised", self._rules.name, why)

    def _run(self) -> None:
        while not self._stopped.is_set():
            woken = self._wake.wait(self.interval)
            if self._stopped.is_set():
                return
            if woken:
                self._wake.clear()
            if self._hup:
                self._hup = False
                self._reload("SIGHUP")
            elif self._paths:
                self.poll()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: Optional[float] = 5.0) -> None:
        """Stop watching; the previous SIGHUP handler is put back (on the main thread)."""
        self._stopped.set()
        self._wake.set()
        if self._signal is not None and threading.current_thread() is threading.main_thread():
            import signal

            signal.signal(self._signal, self._previous)
            self._signal = None
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
