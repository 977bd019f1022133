"""A pause is interruptible from the moment it says where it paused (no servers needed).

A process started with SIGINT ignored (a shell script's background job) gets SIGINT back for
the pause. Whoever waits for the "paused at" line may signal as soon as it reads it, so the
handler must be in place before the line is written, not after.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator

import pytest

from twopc.coordinator import CrashPoint, PauseAt


class SignalsWhenWritten(io.StringIO):
    """A stream that sends this process SIGINT the moment the pause line is written."""

    def write(self, text: str) -> int:
        written = super().write(text)
        if "paused at" in text:
            os.kill(os.getpid(), signal.SIGINT)
        return written


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_sigint_sent_on_reading_the_pause_line_interrupts_the_pause(
    sigint_ignored: None,
) -> None:
    out = SignalsWhenWritten()
    pause = PauseAt(CrashPoint.AFTER_DECISION, seconds=5, out=out)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pause.reached(CrashPoint.AFTER_DECISION, "g.1")
    assert time.monotonic() - started < 4  # not when the pause ran out
    assert out.getvalue().startswith("paused at after-decision: pid ")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # ignored again afterwards
