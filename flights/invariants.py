"""What must hold of the three databases once every booking has finished, and a check of it.

The rules are pure functions over the rows :func:`flights.schema.read_flights` reads (and
what is prepared or unfinished); :func:`check_flights` reads the databases and applies them.
Each violation names its rule:

========================  ===============================================================
``seat-once``             a seat is booked by at most one confirmed booking
``seat-held``             a confirmed booking's seat is held (booked, or pending until a
                          saga's release) by that booking; a booked seat's booking is
                          confirmed
``net-charge``            a confirmed booking's charges minus refunds are its amount, from
                          exactly one charge; a cancelled booking's (or an unknown one's)
                          are zero
``confirmation``          a confirmation exists exactly for the confirmed bookings
``settled``               nothing is pending (seat or booking), prepared (a twopc branch in
                          any of the three databases) or unfinished (a booking saga)
========================  ===============================================================

``settled`` holds only once no booking is running and ``twopc recover`` has finished what
a crash left; the others hold at any moment no booking is between its commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from twopc.flights.booking import BOOKED, CANCELLED, CHARGE, CONFIRMED, PENDING, REFUND
from twopc.flights.saga import BOOKING_SAGA_NAME
from twopc.flights.schema import FlightsView, read_flights
from twopc.participants import Participant
from twopc.saga import all_orchestrators

SEAT_ONCE, SEAT_HELD, NET_CHARGE = "seat-once", "seat-held", "net-charge"
CONFIRMATION, SETTLED = "confirmation", "settled"
RULES = (SEAT_ONCE, SEAT_HELD, NET_CHARGE, CONFIRMATION, SETTLED)
_ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Violation:
    """One rule broken, about one seat, booking or transaction."""

    rule: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.subject}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class Unsettled:
    """What is still running or in doubt: our prepared branches (``database:gtrid``) and
    unfinished booking sagas' ids."""

    prepared: Sequence[str] = ()
    sagas: Sequence[str] = field(default_factory=tuple)


def violations(view: FlightsView, unsettled: Unsettled | None = None) -> list[Violation]:
    """Every rule ``view`` breaks; ``settled`` is checked only when ``unsettled`` is given."""
    found = [*seat_once(view), *seat_held(view), *net_charge(view), *confirmation(view)]
    if unsettled is not None:
        found += settled(view, unsettled)
    return found


def _seat(row: Mapping[str, Any]) -> str:
    return f"{row['flight']} {row['seat']}"


def _confirmed(view: FlightsView) -> list[Mapping[str, Any]]:
    return [b for b in view.bookings if b["state"] == CONFIRMED]


def seat_once(view: FlightsView) -> list[Violation]:
    """No two confirmed bookings of one seat."""
    by_seat: dict[str, list[str]] = defaultdict(list)
    for booking in _confirmed(view):
        by_seat[_seat(booking)].append(str(booking["booking_id"]))
    return [
        Violation(SEAT_ONCE, seat, f"confirmed for {len(ids)} bookings: {', '.join(ids)}")
        for seat, ids in by_seat.items()
        if len(ids) > 1
    ]


def seat_held(view: FlightsView) -> list[Violation]:
    """Each confirmed booking holds its seat; each booked seat's booking is confirmed."""
    seats = {_seat(s): s for s in view.seats}
    states = {str(b["booking_id"]): str(b["state"]) for b in view.bookings}
    found = []
    for booking in _confirmed(view):
        seat = seats.get(_seat(booking))
        held = seat is not None and seat["booking_id"] == booking["booking_id"]
        if not held or seat is None or seat["state"] not in (BOOKED, PENDING):
            shown = "missing" if seat is None else f"{seat['state']} for {seat['booking_id']}"
            found.append(
                Violation(SEAT_HELD, str(booking["booking_id"]), f"confirmed; seat {shown}")
            )
    for seat in view.seats:
        holder = seat["booking_id"]
        if seat["state"] == BOOKED and states.get(str(holder)) != CONFIRMED:
            state = states.get(str(holder), "no such booking")
            found.append(Violation(SEAT_HELD, _seat(seat), f"booked for {holder} ({state})"))
    return found


def net_charge(view: FlightsView) -> list[Violation]:
    """Charges minus refunds per booking: its amount when confirmed, from one charge; zero
    when cancelled, or for payments of a booking that does not exist."""
    net: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    charges: dict[str, int] = defaultdict(int)
    for payment in view.payments:
        booking_id, amount = str(payment["booking_id"]), Decimal(payment["amount"])
        if payment["kind"] == CHARGE:
            net[booking_id] += amount
            charges[booking_id] += 1
        elif payment["kind"] == REFUND:
            net[booking_id] -= amount
    found = []
    bookings = {str(b["booking_id"]): b for b in view.bookings}
    for booking_id, booking in bookings.items():
        got = net[booking_id]
        if booking["state"] == CONFIRMED and (
            got != Decimal(booking["amount"]) or charges[booking_id] != 1
        ):
            what = f"net {got} from {charges[booking_id]} charge(s), amount {booking['amount']}"
            found.append(Violation(NET_CHARGE, booking_id, f"confirmed; {what}"))
        if booking["state"] == CANCELLED and got != 0:
            found.append(Violation(NET_CHARGE, booking_id, f"cancelled; net {got}, not 0"))
    for booking_id in sorted(set(net) - set(bookings)):
        if net[booking_id] != 0:
            found.append(
                Violation(NET_CHARGE, booking_id, f"no such booking; net {net[booking_id]}")
            )
    return found


def confirmation(view: FlightsView) -> list[Violation]:
    """A confirmation for each confirmed booking, and for no other."""
    confirmed = {str(b["booking_id"]) for b in _confirmed(view)}
    sent: dict[str, int] = defaultdict(int)
    for row in view.confirmations:
        sent[str(row["booking_id"])] += 1
    found = [
        Violation(CONFIRMATION, booking_id, "confirmed; no confirmation")
        for booking_id in sorted(confirmed - set(sent))
    ]
    return found + [
        Violation(CONFIRMATION, booking_id, "a confirmation of a booking not confirmed")
        for booking_id in sorted(set(sent) - confirmed)
    ]


def settled(view: FlightsView, unsettled: Unsettled) -> list[Violation]:
    """Nothing pending, prepared or unfinished."""
    pending = view.pending()
    return [
        *(Violation(SETTLED, seat, "seat pending") for seat in pending["seats"]),
        *(Violation(SETTLED, b, "booking pending") for b in pending["bookings"]),
        *(Violation(SETTLED, name, "prepared") for name in unsettled.prepared),
        *(Violation(SETTLED, saga, "booking saga unfinished") for saga in unsettled.sagas),
    ]


# -- reading the databases -----------------------------------------------------------------------


def prepared_of(participants: Iterable[Participant]) -> list[str]:
    """Our prepared branches in the participants' databases, as ``database:gtrid``."""
    return [
        f"{participant.name}:{branch.xid.gtrid}"
        for participant in participants
        for branch in participant.prepared_branches()
        if branch.xid is not None and branch.xid.is_ours
    ]


def unfinished_sagas(home: Path, definition: str, flight: str | None = None) -> list[str]:
    """The ids of unfinished sagas of ``definition`` (booking ``flight``, when given) in
    every orchestrator's log."""
    return [
        state.saga_id
        for log in all_orchestrators(home)
        for state in log.sagas
        if state.definition == definition and not state.finished
        and (flight is None or state.params.get("flight") == flight)
    ]  # fmt: skip


def check_flights(
    participants: Mapping[str, Participant],
    flight: str | None = None,
    *,
    home: Path | None = None,
    settled_too: bool = True,
) -> list[Violation]:
    """Read the three databases (``flight``'s rows, or all) and return the violations;
    with ``settled_too``, also what is prepared (any flight's: a prepared branch names no
    flight) and (``home`` given) the unfinished booking sagas (of ``flight``)."""
    view = read_flights(dict(participants), flight)
    if not settled_too:
        return violations(view)
    sagas = unfinished_sagas(home, BOOKING_SAGA_NAME, flight) if home is not None else []
    return violations(view, Unsettled(prepared_of(participants.values()), sagas))
