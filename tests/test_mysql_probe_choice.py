"""Which prepared MariaDB branches recovery probes when there are more than it may probe, over
fakes: those whose marker was written about when the waited-on transaction first wrote (its
trx id's rank among the transactions with no session)."""

from __future__ import annotations

from twopc.participants.mysql_locks import _PreparedXA, nearest_in_time
from twopc.participants.xid import FORMAT_ID, Xid


def branches(count: int) -> list[_PreparedXA]:
    return [_PreparedXA(Xid(FORMAT_ID, f"c.{n:020d}", "mysql"), f"b{n}") for n in range(count)]


def times_of(made: list[_PreparedXA]) -> dict[tuple[str, str], float]:
    return {(b.xid.gtrid, b.xid.bqual): float(n) for n, b in enumerate(made) if b.xid}


def test_the_branches_probed_surround_the_holders_rank() -> None:
    made = branches(200)
    trx_ids = [str(5000 + 3 * n) for n in range(200)]  # InnoDB numbers them in that order
    chosen = nearest_in_time(made, times_of(made), trx_ids, [str(5000 + 3 * 150)], 32)
    assert [b.name for b in chosen] == [f"b{n}" for n in range(134, 166)]


def test_the_probes_are_shared_between_holders_and_the_rest_fill_up() -> None:
    made = branches(100)
    trx_ids = [str(n) for n in range(100)]
    chosen = nearest_in_time(made, times_of(made), trx_ids, ["10", "90"], 8)
    assert [b.name for b in chosen] == [f"b{n}" for n in (*range(8, 12), *range(88, 92))]
    shuffled = list(reversed(made))  # XA RECOVER's order: the first ones fill what is left
    undated = nearest_in_time(shuffled, {}, trx_ids, ["10"], 5)
    assert [b.name for b in undated] == ["b99", "b98", "b97", "b96", "b95"]


def test_holders_without_a_number_or_a_rank_leave_the_listing_order() -> None:
    made = branches(50)
    assert nearest_in_time(made, times_of(made), ["x", "y"], ["x"], 4) == made[:4]
    assert nearest_in_time(made, times_of(made), [], ["7"], 4) == made[:4]
    assert nearest_in_time(made, times_of(made), ["1", "2"], [], 4) == made[:4]
