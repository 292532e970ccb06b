"""``python -m bench [--quick] [--only parse,read] [--json PATH]``: run the benchmarks, print the tables."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.plots import write_plots
from bench.report import Context, Table, machine
from bench.rig import OtherLoad

BENCHMARKS = [
    "load",
    "parse",
    "delta_apply",
    "write",
    "read",
    "e2e",
    "latency",
    "reconnect",
    "faults",
    "scale",
    "topology",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: check the results, not the speed (CI)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--json", default="bench/results/latest.json", help="where to write the numbers")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['redis']}")
    print(f"mode: {'quick (correctness only, numbers meaningless)' if args.quick else 'full'}\n", flush=True)
    tables: list[Table] = []
    ctx = Context(quick=args.quick, workdir=Path(tempfile.mkdtemp(prefix="md-bench-")))
    started = time.monotonic()
    try:
        for name in names:
            module = importlib.import_module(f"bench.{name}")
            t0 = time.monotonic()
            load = OtherLoad()
            load.start()
            produced = module.run(ctx)
            others = load.cores()
            for table in produced:
                table.note(
                    f"machine load: other processes (outside the benchmark's own) used {others:.2f} cores on "
                    "average while it ran"
                )
                tables.append(table)
                print(table.render(), flush=True)
            print(f"  ({name}: {time.monotonic() - t0:.1f}s)\n", flush=True)
    finally:
        ctx.close()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    for picture in write_plots(ctx.series, out.parent):
        print(f"plot written to {picture}")
    report = {"machine": info, "quick": args.quick, "seconds": round(time.monotonic() - started, 1),
              "tables": [t.to_json() for t in tables]}  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    failures = [f"{t.name}: {f}" for t in tables for f in t.failures]
    print(f"numbers written to {out}")
    if failures:
        print("FAILED CHECKS:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
