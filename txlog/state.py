"""Which transactions are unfinished: the state a checkpoint carries and replay rebuilds."""

from __future__ import annotations

from collections.abc import Iterable

from twopc.txlog.record import Record


class UnfinishedTracker:
    """Records of every txid that has no final record yet, kept in append order.

    A txid is unfinished from its first record until a final record; its records are then
    forgotten (a later record with the same txid starts it afresh).
    """

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._next = 0
        self._records: dict[int, Record] = {}  # sequence -> record; dict order = append order
        self._by_txid: dict[str, list[int]] = {}
        for record in records:
            self.apply(record)

    def apply(self, record: Record) -> None:
        """Account for ``record`` having been appended."""
        if record.final:
            for sequence in self._by_txid.pop(record.txid, ()):
                del self._records[sequence]
            return
        self._next += 1
        self._records[self._next] = record
        self._by_txid.setdefault(record.txid, []).append(self._next)

    def records(self) -> list[Record]:
        """Records of unfinished txids, in append order."""
        return list(self._records.values())

    def unfinished(self) -> dict[str, list[Record]]:
        """txid -> its records, for txids with no final record yet."""
        return {txid: [self._records[s] for s in seqs] for txid, seqs in self._by_txid.items()}

    def __len__(self) -> int:
        return len(self._by_txid)
