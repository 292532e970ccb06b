"""Running the whole system on one machine: a private redis-server, child processes, the offline demo.

A tool, not library code: the demo (``make demo``), the tests and the benchmarks use it; engines and
feeders never import it.

- `redis_server`: a private redis-server on a free port (never a Redis this process did not start);
- `child`: a child process with its log file, always stopped by its owner;
- `demo`: ``make demo`` / ``make run``.
"""
