"""Out-of-core OLS: streaming throughput against pyarrow's raw read, memory, 1 vs 2 processes.

Uses ``$REGTORCH_BENCH_PARQUET`` if set, else writes a table with make_large_parquet.py
(1 GB; ``--quick``: 0.25 GB) under /tmp. Rows/s and MB/s of regtorch's one-pass OLS against
pyarrow reading the same file in batches of the same size (the floor for any reader); peak
resident memory of a `regtorch fit --stream --memory-limit` process (whole process); 1
against 2 processes under torchrun. Coefficients are compared with the generator's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _table import table

HERE = Path(__file__).resolve().parent


def _dataset(gb: float) -> Path:
    env = os.environ.get("REGTORCH_BENCH_PARQUET")
    if env:
        return Path(env)
    path = Path(tempfile.gettempdir()) / f"regtorch-bench-{gb:g}gb.parquet"
    if not path.exists() or not path.with_suffix(".json").exists():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "make_large_parquet.py"),
                "--gb",
                str(gb),
                "--out",
                str(path),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def _dataset_small() -> Path:
    path = Path(tempfile.gettempdir()) / "regtorch-bench-mlp-rg100k.parquet"
    if not path.exists() or not path.with_suffix(".json").exists():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "make_large_parquet.py"),
                "--gb",
                "0.15",
                "--row-group",  # 100k-row groups: every rank gets a share
                "100000",
                "--out",
                str(path),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def _raw_read(path: Path, batch_rows: int) -> float:
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    pf = pq.ParquetFile(path)
    for _ in pf.iter_batches(batch_size=batch_rows, use_threads=True):
        pass
    return time.perf_counter() - t0


def _cli(args: list[str], torchrun: int = 0) -> tuple[float, int, str]:
    """Run `regtorch fit ...`; return seconds, peak RSS in bytes (largest process), stdout."""
    prefix = (
        [sys.executable, "-m", "regtorch"]
        if not torchrun
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            "-m",
            "regtorch",
        ]
    )
    cmd = (
        ["/usr/bin/time", "-v", *prefix, *args]
        if Path("/usr/bin/time").exists()
        else [*prefix, *args]
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if m:
        rss = int(m.group(1)) * 1024
    else:
        import resource

        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return seconds, rss, proc.stdout


def run(args: Any) -> str:
    from regtorch import LinearRegression
    from regtorch.data import TableSource, parse_memory
    from regtorch.linear import stream_fit_linear

    gb = 0.25 if args.quick else 1.0
    path = _dataset(gb)
    meta = json.loads(path.with_suffix(".json").read_text())
    size_mb = path.stat().st_size / 1e6
    budget = os.environ.get("REGTORCH_BENCH_MEMORY", "1GB")
    src = TableSource(path, "y", memory_limit=parse_memory(budget))
    rows = meta["rows"]
    est = LinearRegression()
    raws, fits = [], []
    for _ in range(3):  # interleaved, best of 3: the page cache and the machine are noisy
        raws.append(_raw_read(path, src.batch_rows))
        fits.append(stream_fit_linear(est, src)["seconds"])
    raw, fit_s = min(raws), min(fits)
    err = float(
        np.max(np.abs(np.r_[est.intercept_, est.coef_] - np.r_[meta["intercept"], meta["coef"]]))
    )
    out = Path(tempfile.mkdtemp())
    cli1, rss1, _ = _cli(
        [
            "fit",
            str(path),
            "--target",
            "y",
            "--stream",
            "--memory-limit",
            budget,
            "--test-size",
            "0",
            "--no-baseline",
        ]
    )
    rows_out = [
        ["pyarrow raw read (batches)", raw, rows / raw, size_mb / raw, "-", "-"],
        [
            "regtorch streaming OLS (in process)",
            fit_s,
            rows / fit_s,
            size_mb / fit_s,
            f"{raw / fit_s:.0%} of raw read",
            f"{err:.1e}",
        ],
        [
            f"regtorch fit --stream --memory-limit {budget} (CLI, 1 process)",
            cli1,
            rows / cli1,
            size_mb / cli1,
            f"peak RSS {rss1 / 2**20:.0f} MiB",
            "-",
        ],
    ]
    try:
        cli2, rss2, _ = _cli(
            [
                "fit",
                str(path),
                "--target",
                "y",
                "--memory-limit",
                budget,
                "--test-size",
                "0",
                "--out",
                str(out / "two"),
            ],
            torchrun=2,
        )
        rows_out.append(
            [
                "torchrun --nproc_per_node=2 (CLI)",
                cli2,
                rows / cli2,
                size_mb / cli2,
                f"{cli1 / cli2:.2f}x of 1 process",
                "-",
            ]
        )
    except RuntimeError as exc:  # pragma: no cover - reported, not hidden
        rows_out.append(["torchrun --nproc_per_node=2", f"failed: {exc}", "", "", "", ""])
    # one MLP epoch, 1 vs 2 processes, on a smaller table (MLP 64-64, global batch 1024)
    small = _dataset_small()
    mlp = [
        "fit",
        str(small),
        "--target",
        "y",
        "--model",
        "mlp",
        "--hidden",
        "64,64",
        "--epochs",
        "1",
        "--batch-size",
        "1024",
        "--test-size",
        "0",
        "--val-size",
        "0.01",
    ]
    try:
        m1, _, _ = _cli([*mlp, "--stream", "--out", str(out / "mlp1")])
        m2, _, _ = _cli([*mlp, "--out", str(out / "mlp2")], torchrun=2)
        n_small = json.loads(small.with_suffix(".json").read_text())["rows"]
        rows_out.append(
            [f"MLP epoch, 1 process ({n_small:,} rows, CLI)", m1, n_small / m1, "-", "-", "-"]
        )
        rows_out.append(
            [
                "MLP epoch, torchrun 2 processes (DDP, CLI)",
                m2,
                n_small / m2,
                "-",
                f"{m1 / m2:.2f}x of 1 process",
                "-",
            ]
        )
    except RuntimeError as exc:  # pragma: no cover
        rows_out.append(["MLP epoch 1 vs 2 processes", f"failed: {exc}", "", "", "", ""])
    head = (
        f"{path} ({size_mb:.0f} MB, {rows:,} rows x {meta['features']} features; batches of "
        f"{src.batch_rows:,} rows for a {budget} budget)\n"
    )
    return head + table(
        ["reader / fit", "seconds", "rows/s", "MB/s", "vs anchor", "max |dcoef| vs truth"], rows_out
    )
