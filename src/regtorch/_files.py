"""Atomic file writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_safetensors", "write_bytes_atomic", "write_json_atomic"]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_safetensors(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a safetensors file's bytes: regtorch's JSON metadata and the tensors.

    Raises ``ValueError`` naming the problem for a short, truncated or padded file, a header
    that is not a JSON object, or metadata without a regtorch object. Nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    hlen = int.from_bytes(raw[:8], "little")
    if hlen > len(raw) - 8:
        raise ValueError("the header runs past the end of the file")
    try:
        header = json.loads(raw[8 : 8 + hlen])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if 8 + hlen + max(ends, default=0) != len(raw):
            raise ValueError("its size does not match its header (truncated?)")
        tensors = load(raw)
        meta = json.loads(header["__metadata__"]["regtorch"])
    except (SafetensorError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError("no regtorch metadata")
    return meta, tensors
