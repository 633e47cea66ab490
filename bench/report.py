"""The benchmark's output: progress lines, the step records of results.json, and the tables.

Two tables: ``Comparison`` (pdcat's row against every peer's, medians of the rounds, a ratio per
cell and the goals judged PASS/FAIL) and the list of ``Metric`` rows that compare pdcat with the
original product's method and with itself (cache, big bundle).
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024

__all__ = ["Cell", "CompRow", "Comparison", "Metric", "Report", "median", "mib", "ratio_metric", "render"]


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def render(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded so it also reads as plain text."""
    cells = [[c.replace("|", "\\|") for c in r] for r in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|-" + "-|-".join("-" * w for w in widths) + "-|"
    return "\n".join([line(cells[0]), sep, *[line(r) for r in cells[1:]]])


@dataclass
class Metric:
    name: str
    pdcat: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None
    """None: not judged (skipped or not applicable)."""
    note: str = ""

    def row(self) -> list[str]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}"
        return [self.name, self.pdcat, self.baseline, ratio, self.target, verdict]


def ratio_metric(
    name: str,
    pdcat: float,
    base: float,
    *,
    ratio: float,
    target: str,
    ok: Callable[[float], bool],
    unit: str = "s",
    note: str = "",
) -> Metric:
    def fmt(v: float) -> str:
        return f"{v:.2f} s" if unit == "s" else mib(v)

    return Metric(name, fmt(pdcat), fmt(base), ratio, target, ok(ratio), note)


# ---- pdcat against its peers ------------------------------------------------------------------
@dataclass
class Cell:
    """One figure of one tool: its text, and the number a ratio against pdcat is taken of."""

    text: str
    value: float | None = None


@dataclass
class CompRow:
    name: str
    unit: str
    """"s" or "MiB": how a ratio against pdcat reads (peer / pdcat)."""
    cells: dict[str, Cell] = field(default_factory=dict)
    goal: str = ""
    passed: bool | None = None
    measured: str = ""
    """What was judged, shown next to PASS/FAIL (e.g. the ratio)."""
    note: str = ""


@dataclass
class Comparison:
    """pdcat's row against every peer's; ``columns`` = (key, heading), pdcat first."""

    columns: list[tuple[str, str]]
    rows: list[CompRow] = field(default_factory=list)

    def table(self) -> str:
        head = ["", *[title for _, title in self.columns], "goal", "pass/fail"]
        lines = []
        for row in self.rows:
            base = row.cells.get("pdcat")
            out = [row.name]
            for key, _ in self.columns:
                cell = row.cells.get(key)
                if cell is None:
                    out.append("-")
                    continue
                text = cell.text
                if (
                    key != "pdcat"
                    and cell.value is not None
                    and base is not None
                    and base.value
                    and row.unit in ("s", "MiB")
                ):
                    text += f" ({cell.value / base.value:.2f}x)"
                out.append(text)
            verdict = {True: "PASS", False: "FAIL", None: "-" if not row.goal else "n/a"}[row.passed]
            if row.measured and row.passed is not None:
                verdict += f" ({row.measured})"
            lines.append([*out, row.goal or "-", verdict])
        notes = [f"  {r.name}: {r.note}" for r in self.rows if r.note]
        text = render(head, lines)
        text += "\n\n(nx) after a peer's figure = that peer's figure / pdcat's: above 1, pdcat is faster or smaller."
        if notes:
            text += "\n\nNotes on the rows:\n" + "\n".join(notes)
        return text

    def json(self) -> list[dict[str, Any]]:
        return [
            {
                "row": r.name,
                "unit": r.unit,
                "cells": {k: {"text": c.text, "value": c.value} for k, c in r.cells.items()},
                "goal": r.goal,
                "pass": r.passed,
                "measured": r.measured,
                "note": r.note,
            }
            for r in self.rows
        ]


@dataclass
class Report:
    started: float = field(default_factory=time.monotonic)
    steps: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comparison: Comparison | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"NOTE: {text}")

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {}
        self.steps[name] = record
        t = time.monotonic()
        try:
            yield record
        except BaseException:
            record["error"] = traceback.format_exc(limit=3)
            raise
        finally:
            record.setdefault("step_seconds", round(time.monotonic() - t, 3))

    def table(self) -> str:
        out = render(
            ["metric", "pdcat", "baseline", "ratio", "target", "pass/fail"], [m.row() for m in self.metrics]
        ).splitlines()
        notes = [f"  {m.name}: {m.note}" for m in self.metrics if m.note]
        if notes:
            out += ["", "Notes on the rows:", *notes]
        return "\n".join(out)
