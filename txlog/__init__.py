"""The durable, append-only decision log: segment files of checksummed records, written
by one locked writer with group commit, checkpointed so that only unfinished transactions
keep log space; it knows nothing about databases (a final record finishes a txid, that is
all). Writers use :class:`TransactionLog`; readers and operators use :func:`read_log`,
:func:`verify_log` and :func:`is_locked`; a :class:`LogHome` is a directory of logs, one per
owner, locked while their owners live. The on-disk format is in ``txlog/README.md``.
"""

from __future__ import annotations

from twopc.txlog.errors import LogCorrupt, LogError, LogLocked, LogMissing
from twopc.txlog.home import LogHome
from twopc.txlog.locking import is_locked
from twopc.txlog.log import DEFAULT_SEGMENT_BYTES, LogStats, TransactionLog
from twopc.txlog.record import Record
from twopc.txlog.replay import LogContents, read_log
from twopc.txlog.verify import Problem, SegmentReport, VerifyReport, verify_log

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "LogContents",
    "LogCorrupt",
    "LogError",
    "LogHome",
    "LogLocked",
    "LogMissing",
    "LogStats",
    "Problem",
    "Record",
    "SegmentReport",
    "TransactionLog",
    "VerifyReport",
    "is_locked",
    "read_log",
    "verify_log",
]
