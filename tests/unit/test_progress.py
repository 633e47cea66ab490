"""One progress renderer per kind of output (issue 15, item 6): a rich bar on a terminal, plain lines
without one; both show what was really done, so a failed or interrupted transfer does not look done."""

from __future__ import annotations

import io

from rich.console import Console

from client.output import LineProgress, RichProgress


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
