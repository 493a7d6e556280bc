"""Write a large synthetic regression table as Parquet, with known coefficients.

    python benchmarks/make_large_parquet.py --gb 4 --out /tmp/big.parquet [--features 20]

Columns f0..f{p-1} (float64) and y = 3 + X @ coef + N(0, 1), coef_j = (j + 1) / p. Written in
row groups of 1,000,000 rows (``--row-group``), chunk by chunk: the generator itself needs little memory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def coefficients(p: int) -> np.ndarray:
    return (np.arange(p) + 1.0) / p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=1.0, help="approximate size in GB")
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--row-group", type=int, default=1_000_000, help="rows per row group")
    args = ap.parse_args()
    p = args.features
    rows = int(args.gb * 1024**3 / (8 * (p + 1)))
    chunk = args.row_group
    coef = coefficients(p)
    rng = np.random.default_rng(args.seed)
    names = [f"f{j}" for j in range(p)] + ["y"]
    schema = pa.schema([(n, pa.float64()) for n in names])
    t0 = time.perf_counter()
    out = Path(args.out)
    with pq.ParquetWriter(out, schema, compression="none") as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            X = rng.normal(size=(n, p))
            y = 3.0 + X @ coef + rng.normal(size=n)
            w.write_table(
                pa.Table.from_arrays(
                    [pa.array(X[:, j]) for j in range(p)] + [pa.array(y)], schema=schema
                ),
                row_group_size=chunk,
            )
    meta = {
        "rows": rows,
        "features": p,
        "coef": coef.tolist(),
        "intercept": 3.0,
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
    }
    out.with_suffix(".json").write_text(json.dumps(meta))
    print(json.dumps({k: v for k, v in meta.items() if k != "coef"}))


if __name__ == "__main__":
    main()
