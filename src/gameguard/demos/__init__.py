"""Runnable demos of gameguard, one module per capability (each exposes ``run(seed, out)``).

They share one look: :func:`header` opens a section (a title, then what its figures mean),
:func:`fold_changes` writes state changes with a back-and-forth folded.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

__all__ = ["header", "fold_changes"]


def header(out: Callable[[str], Any], title: str, *legend: str) -> None:
    """Open a demo section: ``== title ==``, then the legend lines (what each column or
    figure below means), indented."""
    out(f"== {title} ==")
    for line in legend:
        out(f"   {line}")


def fold_changes(changes: Sequence[Tuple[float, str, str]]) -> List[str]:
    """``(time, old, new)`` state changes as readable steps: two or more round trips between
    the same two states fold into one (``14.6-24.6 s open ⇄ half_open ×6``), and changes in
    the same tenth of a second chain (``26.6 s open → half_open → closed``)."""
    steps: List[str] = []
    chain_at, chain = "", [""]  # the plain step being built: its time and its states
    i = 0
    while i < len(changes):
        at, old, new = changes[i]
        j = i
        while j + 1 < len(changes) and changes[j][1:] == (old, new) \
                and changes[j + 1][1:] == (new, old):
            j += 2
        if (j - i) // 2 >= 2:
            first, last = f"{at:.1f}", f"{changes[j - 1][0]:.1f}"
            span = first if first == last else f"{first}-{last}"
            steps.append(f"{span} s {old} ⇄ {new} ×{(j - i) // 2}")
            chain_at, i = "", j
            continue
        stamp = f"{at:.1f} s"
        if chain_at == stamp and chain[-1] == old:
            chain.append(new)
            steps[-1] = f"{stamp} " + " → ".join(chain)
        else:
            chain_at, chain = stamp, [old, new]
            steps.append(f"{stamp} {old} → {new}")
        i += 1
    return steps
