"""twopc: atomic business operations across PostgreSQL and MySQL/MariaDB databases.

- :mod:`twopc.coordinator` runs presumed-abort two-phase commit over participants, with a
  durable decision log, recovery of in-doubt transactions and an audit;
- :mod:`twopc.participants` adapts each resource manager (PostgreSQL, MySQL/MariaDB);
- :mod:`twopc.txlog` is the durable, checksummed, group-committed log;
- :mod:`twopc.saga` runs the same work as a saga of local transactions;
- :mod:`twopc.bank` is the demo domain on top of both engines;
- :mod:`twopc.cli` is the ``twopc`` command (also ``python -m twopc``).
"""
