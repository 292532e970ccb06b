"""``md``: the command-line tool that shows people what the shared market-data cache holds.

A tool, not library code: engines import `client`; this package imports `client` like any other user would.

- `main`: the entry point, the argument parser, the exit codes;
- `commands`: ``get``, ``watch``, ``status``, ``symbols``: what each reads and prints;
- `render`: how numbers, books, the watch table and feeder records are shown.
"""
