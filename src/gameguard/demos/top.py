"""The demo's last section: what ``python -m gameguard top`` shows for the guards the demo
built, read from this process's registry exactly as the live view reads it."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

from .. import top
from . import header


def run(seed: int = 7, out: Callable[[str], Any] = print,
        objects: Optional[Iterable[object]] = None) -> Dict[str, Any]:
    """Print one ``top`` frame (totals since start) of ``objects`` (default: every guard in
    this process's registry); return it."""
    header(out, "Live view: python -m gameguard top",
           "the guards above as an operator sees them: state, calls and rejections, cache",
           "hit ratio. Against a running server: python -m gameguard top --url "
           "http://HOST:PORT/metrics",
           "(its PrometheusCollector's endpoint) refreshes every second with rates per second.")
    frame = top.render(top.read_local(objects))
    for line in frame.splitlines():
        out(f"   {line}")
    return {"frame": frame}
