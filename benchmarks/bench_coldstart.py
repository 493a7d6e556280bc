"""Cold start, whole process: `regtorch fit` on 800 sine rows against `python -c "import torch"`.

The tutorial's sine (``make_sine(legacy_noise_seed=42)``, its 800 training rows as columns x, y)
goes to a CSV in a temporary folder; ``python -c "import torch"``, ``python -m regtorch fit
small.csv --target y --model mlp`` and ``... --model linear`` run in fresh subprocesses,
interleaved, best of 5 (``--quick``: 3). Goals: mlp <= 2x and linear <= 1.6x the torch import.
The test R2 each fit prints is collected to show every repeat gives the same result.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _table import table

GOALS = {"mlp": 2.0, "linear": 1.6}
# the "model" row of the CLI's metrics table: its first number is the test R2
_R2 = re.compile(r"^model\s+(\S+)", re.MULTILINE)


def _write_csv(folder: Path) -> Path:
    from regtorch.datasets import make_sine

    d = make_sine(legacy_noise_seed=42)
    path = folder / "small.csv"
    np.savetxt(
        path, np.c_[d.X_train, d.y_train], delimiter=",", header="x,y", comments="", fmt="%.9g"
    )
    return path


def _commands(csv: Path) -> dict[str, list[str]]:
    fit = [sys.executable, "-m", "regtorch", "fit", csv.name, "--target", "y", "--model"]
    return {
        "torch": [sys.executable, "-c", "import torch"],
        "mlp": [*fit, "mlp"],
        "linear": [*fit, "linear"],
    }


def _once(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def _r2(stdout: str) -> str | None:
    m = _R2.search(stdout)
    return m.group(1) if m else None


def run(args: Any) -> str:
    repeats = 3 if args.quick else 5
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cmds = _commands(_write_csv(folder))
        for cmd in cmds.values():  # warm-up: .pyc files written, files in the page cache
            _once(cmd, folder, env)
        seconds: dict[str, list[float]] = {name: [] for name in cmds}
        r2s: dict[str, list[str | None]] = {name: [] for name in cmds}
        for _ in range(repeats):  # interleaved: the machine's load hits every command alike
            for name, cmd in cmds.items():
                s, out = _once(cmd, folder, env)
                seconds[name].append(s)
                r2s[name].append(_r2(out))
    anchor = min(seconds["torch"])
    rows = []
    for name, cmd in cmds.items():
        best = min(seconds[name])
        ratio = best / anchor
        goal = GOALS.get(name)
        distinct = sorted({r for r in r2s[name] if r is not None})
        if name == "torch":
            r2 = "-"
        elif None in r2s[name] or len(distinct) != 1:
            r2 = f"DIFFER: {r2s[name]}"
        else:
            r2 = f"{distinct[0]} (all {repeats} equal)"
        rows.append(
            [
                shlex.join(["python", *cmd[1:]]),
                best,
                float(np.median(seconds[name])),
                f"{ratio:.2f}x",
                "-" if goal is None else f"<= {goal:g}x: {'met' if ratio <= goal else 'MISSED'}",
                r2,
            ]
        )
    head = (
        f"800 sine rows (make_sine(legacy_noise_seed=42) training split), fresh processes, "
        f"interleaved, best of {repeats}; PYTHONDONTWRITEBYTECODE unset and one unmeasured "
        "warm-up run of each command first, so the .pyc files exist and the files are cached.\n"
    )
    return head + table(
        ["command", "best s", "median s", "vs import torch", "goal", "test R2"], rows
    )
