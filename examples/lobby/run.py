"""Run the lobby on a free 127.0.0.1 port and drive it with a client, in one command:

    python examples/lobby/run.py

Bounded: a fixed number of requests, every wait with a deadline (about 3 s in all). Exits 0
when every guard did what the lobby promises, 1 otherwise.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

import httpx
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import CHAT_SEATS, create_app  # noqa: E402

DEADLINE = 10.0


def wait_for(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main() -> int:
    app, parts = create_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
    if not server.started:
        print("the server did not start")
        return 1
    checks: list[tuple[str, bool]] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE) as c:
            checks += drive(c, port, parts)
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        sock.close()
    for what, ok in checks:
        print(f"[{'ok' if ok else 'FAILED'}] {what}")
    return 0 if all(ok for _, ok in checks) else 1


def drive(c: httpx.Client, port: int, parts: dict[str, Any]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    # 1. a player spams "join": the first 3 pass (the burst), then 429 with Retry-After
    spam = [c.post("/lobby/join", headers={"x-player-id": "spammer"}) for _ in range(6)]
    codes = [r.status_code for r in spam]
    print(f"spammer joins: {codes}, Retry-After {spam[-1].headers.get('retry-after')}")
    checks.append(("a spamming player is limited (429 + Retry-After)",
                   codes[:3] == [200] * 3 and set(codes[3:]) == {429}
                   and spam[-1].headers.get("retry-after") == "2"))
    calm = c.post("/lobby/join", headers={"x-player-id": "calm"})
    checks.append(("another player still joins", calm.status_code == 200))

    # 2. the matchmaker goes down: 3 x 502, then the breaker answers 503 without calling it
    matchmaker, breaker = parts["matchmaker"], parts["breaker"]
    headers = {"x-player-id": "calm"}
    checks.append(("matchmaking works", c.get("/matchmaking/find", headers=headers)
                   .status_code == 200))
    matchmaker.down = True
    failed = [c.get("/matchmaking/find", headers=headers).status_code for _ in range(3)]
    wait_for(lambda: breaker.state == "open", "the breaker to open")
    calls = matchmaker.calls
    shed = c.get("/matchmaking/find", headers=headers)
    print(f"matchmaker down: {failed}, then {shed.status_code} "
          f"(Retry-After {shed.headers.get('retry-after')}), breaker {breaker.state}")
    checks.append(("an open breaker answers 503 + Retry-After, sparing the matchmaker",
                   failed == [502] * 3 and shed.status_code == 503
                   and shed.headers.get("retry-after") == "1" and matchmaker.calls == calls))
    matchmaker.down = False
    time.sleep(1.0)  # open_duration: then one probe goes through and closes the breaker
    probe = c.get("/matchmaking/find", headers=headers)
    wait_for(lambda: breaker.state == "closed", "the breaker to close")
    checks.append(("the breaker closes once the matchmaker is back", probe.status_code == 200))

    # 3. chat seats: CHAT_SEATS connections stay open; one more is closed with 1013
    url = f"ws://127.0.0.1:{port}/lobby/chat"
    with contextlib.ExitStack() as stack:
        seats = [stack.enter_context(connect(url, open_timeout=DEADLINE))
                 for _ in range(CHAT_SEATS)]
        for i, ws in enumerate(seats):
            ws.send(f"hi {i}")
            assert ws.recv(timeout=DEADLINE) == f"echo: hi {i}"
        code = None
        with connect(url, open_timeout=DEADLINE) as extra:
            try:
                extra.recv(timeout=DEADLINE)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
        print(f"chat: {CHAT_SEATS} seats taken, one more closed with {code}")
        checks.append(("a full chat closes the extra connection with 1013", code == 1013))
    chat = parts["chat"]
    wait_for(lambda: chat.in_flight == 0, "the chat seats back")
    with connect(url, open_timeout=DEADLINE) as again:
        again.send("back")
        checks.append(("seats come back when players leave",
                       again.recv(timeout=DEADLINE) == "echo: back"))
    return checks


if __name__ == "__main__":
    sys.exit(main())
