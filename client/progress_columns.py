"""The terminal bar's rate and time-left columns, over the bytes really moved (``output.pace``): rich's
own columns count a sparse disk's holes as speed. Loaded only by the commands that transfer."""

from __future__ import annotations

from rich.progress import ProgressColumn, Task
from rich.text import Text

from client.output import human_size, pace


def _pace(task: Task) -> tuple[float, float | None]:
    skipped = int(task.fields.get("skipped", 0))
    left = max(int((task.total or 0) - task.completed), 0)
    return pace(int(task.completed) - skipped, left, task.elapsed or 0.0)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate, _ = _pace(task)
        return Text(f"{human_size(rate)}/s" if rate > 0 else "?", style="progress.data.speed")


class TimeLeftColumn(ProgressColumn):
    max_refresh = 0.5  # a steadier figure than every frame

    def render(self, task: Task) -> Text:
        _, left = (0.0, 0.0) if task.finished else _pace(task)
        if left is None:
            return Text("-:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")
