"""One progress renderer per kind of output (issue 15, item 6): a rich bar on a terminal, plain lines
without one; both show what was really done, so a failed or interrupted transfer does not look done."""

from __future__ import annotations

import io
import re

from rich.console import Console

from client.output import LineProgress, RichProgress
from client.progress_columns import RateColumn, TimeLeftColumn


def test_plain_lines_say_how_far_how_fast_and_how_it_ended() -> None:
    out = io.StringIO()
    shown = LineProgress(out, every=0)
    shown.start("pushing", 4 * 1024 * 1024)
    shown.advance(1024 * 1024)
    shown.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "pushing: 4.0 MiB"
    assert lines[1].startswith("pushing: 25% (1.0 MiB of 4.0 MiB), ") and "/s" in lines[1] and "left" in lines[1]
    assert lines[2].startswith("pushing: stopped at 25% (1.0 MiB of 4.0 MiB)")

    out = io.StringIO()
    shown = LineProgress(out, every=3600)
    shown.start("downloading", 10)
    for _ in range(10):
        shown.advance(1)  # quieter than every hour: no line until the end
    shown.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("downloading: done, 10 B in ")


def test_the_bar_stays_where_the_transfer_stopped() -> None:
    shown = RichProgress(Console(file=io.StringIO(), force_terminal=True))
    shown.start("pushing", 100)
    shown.advance(40)
    shown.finish()  # a failure or Ctrl-C: finish() runs in the transfer's `finally`
    shown.close()
    task = shown._progress.tasks[-1]
    assert (task.completed, task.total) == (40, 100)


def test_holes_count_as_done_but_not_as_speed() -> None:
    """A sparse disk's holes are skipped at once: the rate and time left come from the bytes moved."""
    out = io.StringIO()
    shown = LineProgress(out, every=0)
    shown.start("pushing", 100 * 1024 * 1024)
    shown.skip(50 * 1024 * 1024)
    shown._started -= 10  # ten seconds in, 10 MiB really sent
    shown.advance(10 * 1024 * 1024)
    line = out.getvalue().splitlines()[-1]
    # 10 MiB over a hair more than 10 s; the 50 MiB of holes in neither the rate nor the time left
    assert re.fullmatch(r"pushing: 60% \(60.0 MiB of 100.0 MiB\), (1024.0 KiB|1.0 MiB)/s, about 0:40 left", line)

    bar = RichProgress(Console(file=io.StringIO(), force_terminal=True))
    bar.start("pushing", 100)
    bar.skip(60)
    task = bar._progress.tasks[-1]
    assert task.completed == 60 and task.fields["skipped"] == 60
    rate, eta = RateColumn().render(task).plain, TimeLeftColumn().render(task).plain
    assert (rate, eta) == ("?", "-:--:--")  # nothing moved yet: no rate, rather than a burst of 60 B
    bar.advance(10)
    bar.close()
    assert bar._progress.tasks[-1].completed == 70
