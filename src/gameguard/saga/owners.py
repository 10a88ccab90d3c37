"""Owner tokens and liveness for stores on one host: each process holds an exclusive
``flock`` on ``<db>.owners/<its token>`` for its lifetime, and the kernel drops it when the
process dies (even on SIGKILL), so ``alive(token)`` never waits for a lease to expire.

Lock files are created, probed and swept by several processes at once; two rules keep
that safe. A sweeper unlinks a file only while it holds the file's lock, and only if the
name still points to the file it locked. An owner, once it holds the lock on its new file,
checks that the name still points to that file; if a sweeper or a prober got in between
(the name is gone, or the lock was busy), it starts afresh under a new token. So a token
that is handed out always names a file whose lock its owner holds.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Dict, Iterable, Optional, Tuple

from ..errors import StoreError

try:  # POSIX: liveness by file lock
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid check instead
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCKS", "token", "alive", "sweep"]

LOCKS = fcntl is not None  # lock files in use (else: liveness by pid)

_ATTEMPTS = 64  # fresh tokens tried before giving up (each loss needs a sweeper in between)
_mu = threading.Lock()
_held: Dict[str, Tuple[str, Optional[int]]] = {}  # lock dir -> (token, fd holding its lock)


def _forget_after_fork() -> None:
    # The child inherits the parent's lock fds; holding them would keep the parent "alive"
    # after it dies. Closing the child's copies leaves the parent's locks in place.
    global _mu
    for _, fd in _held.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass
    _held.clear()
    _mu = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; ``False`` if another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _names_file(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        p = os.stat(path)
    except FileNotFoundError:
        return False
    f = os.fstat(fd)
    return (p.st_dev, p.st_ino) == (f.st_dev, f.st_ino)


def _new_token() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"


def _take(lock_dir: str) -> Tuple[str, int]:
    os.makedirs(lock_dir, exist_ok=True)
    for _ in range(_ATTEMPTS):
        name = _new_token()
        path = os.path.join(lock_dir, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        if _try_lock(fd) and _names_file(path, fd):
            return name, fd
        os.close(fd)  # a sweeper or prober got in between: this name is spoiled
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    raise StoreError(f"cannot take an owner lock in {lock_dir!r}: lost {_ATTEMPTS} races "
                     f"with other processes sweeping it")


def token(lock_dir: Optional[str]) -> str:
    """This process's owner token for the database whose lock directory is ``lock_dir``
    (``None``: a memory store, no lock file). Taken once per process."""
    key = lock_dir or ""
    with _mu:
        held = _held.get(key)
        if held is not None:
            return held[0]
        if lock_dir is None or fcntl is None:
            held = (_new_token(), None)
        else:
            held = _take(lock_dir)
        _held[key] = held
        return held[0]


def alive(lock_dir: str, owner: str) -> bool:
    """Whether the process holding ``owner``'s lock may still run."""
    if fcntl is None:  # pragma: no cover
        return _pid_alive(owner)
    if os.sep in owner or owner.startswith("."):
        return False
    try:
        fd = os.open(os.path.join(lock_dir, owner), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)  # closing drops our lock, if we took it


def sweep(lock_dir: str, keep: Iterable[str]) -> int:
    """Remove the lock files of dead owners, except ``keep`` (owners some row still names,
    and this process's own); return how many went."""
    try:
        names = os.listdir(lock_dir)
    except FileNotFoundError:
        return 0
    keep = set(keep)
    removed = 0
    for name in names:
        if name in keep or name.startswith("."):
            continue
        path = os.path.join(lock_dir, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            # unlink only under the lock and only the file we locked: an owner that locks
            # after us finds its name gone and takes a new one
            if _try_lock(fd) and _names_file(path, fd):
                os.unlink(path)
                removed += 1
        finally:
            os.close(fd)
    return removed


def _pid_alive(owner: str) -> bool:  # pragma: no cover - only without fcntl
    try:
        host, pid, _ = owner.rsplit("-", 2)
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
