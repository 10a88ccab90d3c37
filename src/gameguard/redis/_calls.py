"""How a :class:`RedisBackend` sends commands: one interface over three kinds of client.

``decide(rkey, tail)`` is one decision (EVALSHA, or EVAL with ``by_sha=False``: the NOSCRIPT
retry), ``decide_many(rkeys, tail)`` one pipelined round trip with errors in place.
A plain client (sync or asyncio) gets connections of the backend's own, kept on a free
list: redis-py's pool and retry wrapper cost more CPU than the round trip's own work, and
the backend wants neither (it never replays a command, and bounds each call with the socket
timeout). A cluster client is used as given, for its slot routing and redirects.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Deque, Dict, List, Sequence, Tuple

from redis.exceptions import ResponseError

from ._script import SCRIPT, SHA



def connection_settings(client: Any, timeout: float, retry: Any) -> dict[str, Any]:
    """The caller's connection settings, each call bounded by ``timeout`` and never retried
    (a timed-out EVALSHA may have been applied: replaying it would spend budget twice)."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry,
                  retry_on_timeout=False, retry_on_error=[])
    return kwargs


def _bulk(arg: Any) -> bytes:
    b = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


class _Packed:
    """Decisions packed here, the constant part of each once (the SHA, the limiter's
    settings): redis-py's packer costs as much CPU as the rest of a decision. Connections
    of the backend's own, on a free list: at most as many as calls ever ran at once."""

    def __init__(self, client: Any, timeout: float, retry: Any) -> None:
        self._class = client.connection_pool.connection_class
        self._kwargs = connection_settings(client, timeout, retry)
        self._idle: List[Any] = []  # list.pop/append are atomic: no lock needed
        self._tails: Dict[Tuple[str, ...], bytes] = {}

    def _take(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            return self._class(**self._kwargs)  # connects on its first command

    def _packed(self, rkeys: Sequence[str], tail: Tuple[str, ...], by_sha: bool) -> bytes:
        packed = self._tails.get(tail)
        if packed is None:
            if len(self._tails) > 256:  # tails vary with cost and client time: stay bounded
                self._tails.clear()
            packed = self._tails[tail] = b"".join(map(_bulk, tail))
        head = b"*%d\r\n%s" % (len(tail) + 4, _SHA_HEAD if by_sha else _EVAL_HEAD)
        return b"".join(b"%s%s%s" % (head, _bulk(k), packed) for k in rkeys)


def _first(replies: List[Any]) -> Any:
    if isinstance(replies[0], ResponseError):
        raise replies[0]
    return replies[0]


class OwnConnections(_Packed):
    """Connections of the backend's own to one plain Redis (sync). A connection whose call
    failed in transit is dropped (its socket state is unknown); a Redis error reply leaves
    it usable."""

    def _send(self, packed: bytes, replies: int) -> List[Any]:
        conn = self._take()
        out: List[Any] = []
        try:
            conn.send_packed_command([packed])
            for _ in range(replies):
                try:
                    out.append(conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        self._idle.append(conn)
        return out

    def decide(self, rkey: str, tail: Tuple[str, ...], by_sha: bool = True) -> Any:
        return _first(self._send(self._packed([rkey], tail, by_sha), 1))

    def decide_many(self, rkeys: Sequence[str], tail: Tuple[str, ...],
                    by_sha: bool = True) -> List[Any]:
        return self._send(self._packed(rkeys, tail, by_sha), len(rkeys))

    def close(self) -> None:
        while self._idle:
            self._idle.pop().disconnect()


class OwnAsyncConnections(_Packed):
    """:class:`OwnConnections` for asyncio, at most ``limit`` of them (thousands of player
    coroutines must not open thousands of sockets): past it a call waits for one to be
    handed over. A call that fails or is cancelled in flight disconnects its connection
    (the reply it was waiting for must not be read as another call's), which reconnects
    on its next use."""

    def __init__(self, client: Any, timeout: float, retry: Any, limit: int = 64) -> None:
        super().__init__(client, timeout, retry)
        pool_limit = client.connection_pool.max_connections
        self._left = min(limit, pool_limit) if pool_limit else limit  # may still be created
        self._waiters: Deque["asyncio.Future[Any]"] = collections.deque()

    async def _take_async(self) -> Any:
        if self._idle:
            return self._idle.pop()
        if self._left > 0:
            self._left -= 1
            return self._class(**self._kwargs)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over as we were cancelled
                self._give(waiter.result())
            raise

    def _give(self, conn: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _send(self, packed: bytes, replies: int) -> List[Any]:
        conn = await self._take_async()
        out: List[Any] = []
        try:
            await conn.send_packed_command([packed])
            for _ in range(replies):
                try:
                    out.append(await conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._give(conn)
        return out

    async def decide(self, rkey: str, tail: Tuple[str, ...], by_sha: bool = True) -> Any:
        return _first(await self._send(self._packed([rkey], tail, by_sha), 1))

    async def decide_many(self, rkeys: Sequence[str], tail: Tuple[str, ...],
                          by_sha: bool = True) -> List[Any]:
        return await self._send(self._packed(rkeys, tail, by_sha), len(rkeys))

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().disconnect()


def _command(rkey: str, tail: Tuple[str, ...], by_sha: bool) -> Tuple[Any, ...]:
    return ("EVALSHA", SHA, 1, rkey, *tail) if by_sha else ("EVAL", SCRIPT, 1, rkey, *tail)


class ClientCalls:
    """Decisions through a redis-py client (a cluster one: routing by key, redirects)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def decide(self, rkey: str, tail: Tuple[str, ...], by_sha: bool = True) -> Any:
        return self.client.execute_command(*_command(rkey, tail, by_sha))

    def decide_many(self, rkeys: Sequence[str], tail: Tuple[str, ...],
                    by_sha: bool = True) -> List[Any]:
        # execute_command: a cluster pipeline refuses .evalsha(), yet routes EVALSHA by key
        pipe = self.client.pipeline(transaction=False)
        for rkey in rkeys:
            pipe.execute_command(*_command(rkey, tail, by_sha))
        return list(pipe.execute(raise_on_error=False))

    def close(self) -> None:
        """The caller's client stays the caller's to close."""


class AsyncCalls:
    """Decisions through a redis.asyncio cluster client, each also bounded by ``timeout``
    here (the client is the caller's, with its own socket settings)."""

    def __init__(self, client: Any, timeout: float) -> None:
        self.client, self.timeout = client, timeout

    async def decide(self, rkey: str, tail: Tuple[str, ...], by_sha: bool = True) -> Any:
        return await asyncio.wait_for(
            self.client.execute_command(*_command(rkey, tail, by_sha)), self.timeout)

    async def decide_many(self, rkeys: Sequence[str], tail: Tuple[str, ...],
                          by_sha: bool = True) -> List[Any]:
        pipe = self.client.pipeline(transaction=False)
        for rkey in rkeys:
            pipe.execute_command(*_command(rkey, tail, by_sha))
        return list(await asyncio.wait_for(pipe.execute(raise_on_error=False), self.timeout))

    async def aclose(self) -> None:
        """The caller's client stays the caller's to close."""


_SHA_HEAD = _bulk("EVALSHA") + _bulk(SHA) + _bulk("1")
_EVAL_HEAD = _bulk("EVAL") + _bulk(SCRIPT) + _bulk("1")
