"""``python -m twopc``: the ``twopc`` command."""

from twopc.cli import main

main(prog_name="twopc")
