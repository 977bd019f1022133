"""The ``twopc`` subcommands, one module per area (``cli.py`` holds the group that joins
them): each parses its options, calls the library, and prints text for people or JSON.
"""
