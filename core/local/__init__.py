"""The embedded backend: SQLite for records, the local filesystem for blobs (``pdcat serve``)."""

from __future__ import annotations

__all__: list[str] = []
