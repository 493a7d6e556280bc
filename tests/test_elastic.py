"""The streamed MLP under torchrun (2 CPU processes, gloo): a checkpointed run resumed equals
the uninterrupted run, and so does a run whose rank is killed mid-epoch and restarted by
``torchrun --max-restarts=1`` from the last checkpoint (tests/elastic_worker.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WORKER = Path(__file__).with_name("elastic_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("elastic")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["y"] = np.sin(2 * X[:, 0]) + X[:, 1] + 0.05 * rng.normal(size=3000)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), d / "t.parquet", row_group_size=500
    )
    return d, df, None


def _torchrun(tmp_path, name, *args, restarts=0):
    out = tmp_path / name
    proc = subprocess.run(
        [
            *TORCHRUN,
            "--nproc-per-node=2",
            f"--max-restarts={restarts}",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0",
            str(WORKER),
            "--out",
            str(out),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


def _result(out):
    with np.load(out / "weights.npz", allow_pickle=False) as z:
        weights = {k: z[k] for k in z.files}
    return weights, json.loads((out / "history.json").read_text())


@pytest.fixture(scope="module")
def two_ranks(table, tmp_path_factory):
    d, _, _ = table
    tmp = tmp_path_factory.mktemp("ddp")
    proc, out = _torchrun(tmp, "full", "--data", d / "t.parquet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, _result(out)


def _assert_same(a, b):
    wa, ha = a
    wb, hb = b
    assert ha["train_loss"] == hb["train_loss"] and ha["val_loss"] == hb["val_loss"]
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


@pytest.mark.slow
def test_two_ranks_resume_equals_uninterrupted(two_ranks, tmp_path):
    d, full = two_ranks
    ck = tmp_path / "ck.safetensors"
    proc, _ = _torchrun(
        tmp_path, "part", "--data", d / "t.parquet", "--checkpoint", ck, "--stop-after", 2
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ck.exists()
    proc, out = _torchrun(tmp_path, "back", "--data", d / "t.parquet", "--checkpoint", ck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    back = _result(out)
    assert len(back[1]["train_loss"]) == 5
    _assert_same(full, back)


@pytest.mark.slow
def test_elastic_restart_after_a_killed_rank_equals_uninterrupted(two_ranks, tmp_path):
    d, full = two_ranks
    ck = tmp_path / "ck.safetensors"
    proc, out = _torchrun(
        tmp_path,
        "elastic",
        "--data",
        d / "t.parquet",
        "--checkpoint",
        ck,
        "--kill-in-epoch",
        3,
        restarts=1,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((out / "attempts.json").read_text())
    assert log == {"restarts": 1, "resumed_at": 2}  # rank 1 died in epoch 3; resumed after 2
    _assert_same(full, _result(out))
