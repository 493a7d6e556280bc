"""Side-by-side benchmarks: ``make bench`` or ``python benchmarks/run.py [NAME ...]``.

Each entry compares regtorch with its anchor in the same run and prints ratios; machines
here are noisy, so read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> module in benchmarks/ exposing run(args) -> str (a printed table)
ENTRIES = {
    "reference": "bench_reference",
    "linear": "bench_linear",
    "mlp": "bench_mlp",
    "streaming": "bench_streaming",
    "engine": "bench_engine",
    "coldstart": "bench_coldstart",
    "cv": "bench_cv",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"entries to run (default all): {list(ENTRIES)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    names = args.names or list(ENTRIES)
    for name in names:
        if name not in ENTRIES:
            parser.error(f"unknown benchmark {name!r}; choose from {list(ENTRIES)}")
    for name in names:
        mod = importlib.import_module(ENTRIES[name])
        print(f"== {name}: {mod.__doc__.strip().splitlines()[0]}")
        print(mod.run(args))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
