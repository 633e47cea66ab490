"""Push and pull of a VM bundle through presigned URLs.

Push (:mod:`.push`): index the bundle → ask the catalog which chunks it lacks → read, compress and PUT
only those, several in flight → commit. Pull (:mod:`.pull`): resolve → the strategy the answer's
``format`` names: ``chunks`` checks the index against the manifest's pack digest, plans
(:mod:`.plan`), then GETs, verifies and writes each chunk into a hidden partial folder
(:mod:`.download`) renamed into place at the end; ``pdpack`` streams one original-format pack into
the safe unpacker (:mod:`.pdpack`, loaded only for such a pack).

Interrupted transfers resume: a push re-asks which chunks are missing (finished ones are in storage);
a pull keeps a journal of finished chunks next to its partial folder. Every request to storage is
retried as :mod:`client.retry` says.
"""

from __future__ import annotations

from client.transfer.common import DiskFull, NoProgress, Progress, PullResult, TransferConfig, partial_paths
from client.transfer.download import DownloadStats, download
from client.transfer.plan import PullPlan
from client.transfer.pull import pull
from client.transfer.push import PushResult, push

__all__ = [
    "DiskFull",
    "DownloadStats",
    "NoProgress",
    "Progress",
    "PullPlan",
    "PullResult",
    "PushResult",
    "TransferConfig",
    "download",
    "partial_paths",
    "pull",
    "push",
]
