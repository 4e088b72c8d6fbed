"""Result tables: mean and spread over seeds, and the one markdown table writer.

The study (variants x protocols, and differences to random init) and the transfer suite
(benchmark metrics next to the random-init twin) format their cells here and write their tables
with :func:`markdown_table`, so every table of the project reads the same way.
"""
import math
from typing import Dict, Mapping, Sequence

__all__ = ["mean_std", "stat_cell", "markdown_table"]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of a list of metrics."""
    n = len(values)
    mean = sum(values) / n
    # sample standard deviation (n - 1): the seed-to-seed spread
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def stat_cell(
    stats: Mapping, signed: bool = False, bare_single: bool = False, detail: str = ""
) -> str:
    """One cell ``mean +- std (n=N)`` of a :func:`mean_std` result.

    Args:
        stats: ``{"mean", "std", "n"}``.
        signed: print the mean with its sign (a difference).
        bare_single: print only the mean when ``n`` is 1.
        detail: added inside the brackets after the count (e.g. the values by seed).

    Returns:
        e.g. ``12.0 +- 2.0 (n=3)``, ``+2.0 +- 1.4 (n=2: +1.0 / +3.0)``, or ``12.0``
        (``bare_single``, n = 1).
    """
    mean = f"{stats['mean']:+.1f}" if signed else f"{stats['mean']:.1f}"
    if bare_single and stats["n"] == 1:
        return mean
    return f"{mean} +- {stats['std']:.1f} (n={stats['n']}{': ' + detail if detail else ''})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header row, the separator, one line per row of cells.

    Args:
        header: column titles.
        rows: cells, as many per row as ``header`` has titles.

    Returns:
        the table's lines joined by newlines (no trailing newline).

    Raises:
        ValueError: a row has another number of cells than the header.
    """
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"{len(row)} cells for {len(header)} columns: {row}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
