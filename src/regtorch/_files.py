"""Atomic file writes, and safetensors files whose content is checked before it is trusted.

A write goes to a temporary file in the same folder, then a rename; the file gets the
permissions any other file would (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
A safetensors file written here carries a SHA-256 of its tensors and of regtorch's metadata;
reading refuses a header that is too large or too deeply nested before any JSON parser sees
it, and a file whose content no longer matches its hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "IntegrityError",
    "dump_safetensors",
    "read_safetensors",
    "umask",
    "write_bytes_atomic",
    "write_json_atomic",
]

MAX_HEADER_BYTES = 16 * 2**20  # a model's metadata are kilobytes; 16 MiB is absurd already
MAX_JSON_DEPTH = 32  # regtorch writes at most 6 levels
INTEGRITY_KEY = "regtorch.sha256"
# a JSON string literal, escapes included (the unrolled form: linear time, no backtracking)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class IntegrityError(ValueError):
    """A file's content does not match the SHA-256 recorded when it was written."""


def umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0o600 would differ from the other outputs
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
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _sha256_tensors(tensors: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        head = json.dumps([name, str(t.dtype), list(t.shape)]).encode()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        for part in (head, raw):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def dump_safetensors(tensors: Mapping[str, Any], meta: dict[str, Any]) -> bytes:
    """A safetensors file's bytes: the tensors, ``meta`` as JSON, and their SHA-256."""
    from safetensors.torch import save

    text = json.dumps(meta, allow_nan=False)
    record = {
        "algorithm": "sha256",
        "tensors": _sha256_tensors(tensors),
        "metadata": hashlib.sha256(text.encode()).hexdigest(),
    }
    # safetensors refuses tensors that share storage (LassoCV with one alpha: coef_ is a
    # view of coef_path_): those get their own copy, the rest are written as they are
    own, seen = {}, set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        shared = ptr is not None and ptr in seen
        own[k] = v.detach().contiguous().clone() if shared else v
        seen.add(ptr)
    return save(own, metadata={"regtorch": text, INTEGRITY_KEY: json.dumps(record)})


def check_json_text(doc: bytes | str, what: str) -> None:
    """Refuse a JSON document too large or too deeply nested to parse safely.

    The nesting is counted on the brackets outside string literals, without parsing, so a
    document of a million ``[`` never reaches ``json.loads`` (which would recurse into it).
    """
    import numpy as np

    raw = doc.encode() if isinstance(doc, str) else bytes(doc)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(
            f"its {what} is {len(raw):,} bytes, more than the {MAX_HEADER_BYTES:,} allowed"
        )
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    step = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(
        skeleton, (ord("]"), ord("}"))
    )
    depth = int(np.cumsum(step).max(initial=0))
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"its {what} is nested {depth} levels deep (at most {MAX_JSON_DEPTH})")


def _loads(doc: bytes | str, what: str) -> Any:
    check_json_text(doc, what)
    try:
        return json.loads(doc)
    except RecursionError:  # cannot happen after the depth check; kept as a second guard
        raise ValueError(f"its {what} is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"its {what} is not valid JSON ({exc})") from None


def _verify(header: dict[str, Any], text: str, tensors: Mapping[str, Any]) -> bool:
    """Check the recorded hashes; False for a file written before they existed."""
    raw = header["__metadata__"].get(INTEGRITY_KEY)
    if raw is None:
        return False
    record = _loads(raw, "integrity record") if isinstance(raw, str) else None
    if not (
        isinstance(record, dict)
        and record.get("algorithm") == "sha256"
        and isinstance(record.get("tensors"), str)
        and isinstance(record.get("metadata"), str)
    ):
        raise IntegrityError("integrity check failed: the integrity record is malformed")
    if hashlib.sha256(text.encode()).hexdigest() != record["metadata"]:
        raise IntegrityError(
            "integrity check failed: the metadata were altered after the file was written "
            "(their SHA-256 differs from the one recorded)"
        )
    if _sha256_tensors(tensors) != record["tensors"]:
        raise IntegrityError(
            "integrity check failed: the weights were altered after the file was written "
            "(their SHA-256 differs from the one recorded)"
        )
    return True


def read_safetensors(raw: bytes) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Parse a safetensors file's bytes: regtorch's JSON metadata, the tensors, and whether
    the content was verified against its recorded SHA-256 (False: no hash, an older file).

    Raises ``IntegrityError`` (a ``ValueError``) when the content does not match its hashes,
    and ``ValueError`` naming the problem for a short, truncated or padded file, a header
    that is too large, too deeply nested or not a JSON object, or metadata without a regtorch
    object. Nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    hlen = int.from_bytes(raw[:8], "little")
    if hlen > len(raw) - 8:
        raise ValueError("the header runs past the end of the file")
    try:
        header = _loads(raw[8 : 8 + hlen], "header")
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if 8 + hlen + max(ends, default=0) != len(raw):
            raise ValueError("its size does not match its header (truncated?)")
        text = header["__metadata__"]["regtorch"]
        if not isinstance(text, str):
            raise ValueError("no regtorch metadata")
        meta = _loads(text, "metadata")
        tensors = load(raw)
        verified = _verify(header, text, tensors)
    except (SafetensorError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError("no regtorch metadata")
    return meta, tensors, verified
