"""What unpacking a pack refuses; both leave nothing behind."""

from __future__ import annotations

from core.errors import InvalidInput, Unprocessable

__all__ = ["ChecksumMismatch", "PackRejected"]


class PackRejected(InvalidInput):
    """The pack holds something unsafe, or is not a readable tar/tar.gz; nothing was left behind."""


class ChecksumMismatch(Unprocessable):
    """The pack's bytes do not match the checksum its ``.meta`` records; nothing was left behind."""
