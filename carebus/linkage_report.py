"""What fitted linkage parameters say, as a table a person can check (estimate-linkage, benchmarks)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from streams.fellegi_sunter import Parameters


def print_report(params: Parameters, console: Console) -> None:
    table = Table(title="match weights (bits) of each comparison level")
    for col in ("field", "level", "m", "u", "weight"):
        table.add_column(col)
    for f, level, m, u, w in params.report():
        table.add_row(f, level, f"{m:.4f}", f"{u:.5f}", f"{w:+.1f}")
    console.print(table)
    console.print(f"prior: two random records are one person with probability {params.prevalence:.2g}; "
                  f"names with term frequencies: {sum(len(v) for v in params.tf.values()):,}")
    problems = params.non_monotone()
    console.print("[red]not monotone: " + ", ".join(f"{f} level {lvl}" for f, lvl in problems) if problems
                  else "every comparison's weights rise with agreement")
