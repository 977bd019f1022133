"""The choice to send last statements together backs off under contention (no servers)."""

from __future__ import annotations

import pytest

from twopc.coordinator.contention import LockContention


def test_without_contention_every_transaction_tries_together() -> None:
    contention = LockContention()
    for _ in range(100):
        assert contention.together()
        contention.tried(locked=False)
    assert contention.rate == 0.0


def test_frequent_locked_rows_send_in_order_but_still_probe() -> None:
    contention = LockContention(threshold=0.05, weight=1 / 8, probe=4)
    for _ in range(20):
        contention.tried(locked=True)
    assert contention.rate > 0.05
    choices = [contention.together() for _ in range(12)]
    assert choices == [False, False, False, True] * 3  # one try in every four


def test_the_rate_falls_back_once_tries_go_through_again() -> None:
    contention = LockContention(threshold=0.05, weight=1 / 8, probe=4)
    for _ in range(20):
        contention.tried(locked=True)
    assert not contention.together()
    for _ in range(40):  # the probes go through: the average decays
        contention.tried(locked=False)
    assert contention.rate < 0.05
    assert all(contention.together() for _ in range(10))


def test_a_rate_at_the_threshold_already_backs_off() -> None:
    contention = LockContention(threshold=0.5, weight=0.5, probe=100)
    contention.tried(locked=True)  # 0.5
    assert not contention.together()


@pytest.mark.parametrize(
    "settings", [{"threshold": 0.0}, {"threshold": 1.0}, {"weight": 0.0}, {"probe": 0}]
)
def test_settings_out_of_range_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LockContention(**settings)  # type: ignore[arg-type]
