"""The one exception type of the dev-server library."""

from __future__ import annotations


class DevServerError(Exception):
    """A dev server could not be found, set up, started or stopped.

    The message says what failed, which log file to read and what to do next.
    """
