"""Model files and checkpoints: integrity hashes, hostile headers, permissions, Ctrl-C models."""

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import regtorch
from regtorch import MLPRegressor
from regtorch._files import INTEGRITY_KEY, dump_safetensors, read_safetensors
from regtorch.io import ModelFileError
from regtorch.nn.callbacks import Checkpoint
from regtorch.nn.checkpoint import CheckpointError, load_checkpoint
from regtorch.nn.loop import Callback, train
from regtorch.nn.modules import MLP

rng = np.random.default_rng(0)
X = rng.normal(size=(80, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=80)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    path = tmp_path_factory.mktemp("lin") / "m.safetensors"
    return regtorch.save(regtorch.LinearRegression().fit(X, Y), path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    est = MLPRegressor(hidden_layer_sizes=(8,), max_epochs=5, random_state=0).fit(X, Y)
    return regtorch.save(est, tmp_path_factory.mktemp("mlp") / "m.safetensors")


def _parts(path):
    """(metadata dict, integrity record text, tensors) of a file."""
    with safe_open(path, "pt") as fh:
        md = fh.metadata()
        return (
            json.loads(md["regtorch"]),
            md.get(INTEGRITY_KEY),
            {k: fh.get_tensor(k) for k in fh.keys()},
        )


def _scale_in_place(src, dst, name, factor):
    """Multiply one float64 tensor by ``factor`` in the file's bytes, header untouched."""
    raw = bytearray(src.read_bytes())
    hlen = struct.unpack("<Q", raw[:8])[0]
    start, end = json.loads(raw[8 : 8 + hlen])[name]["data_offsets"]
    lo, hi = 8 + hlen + start, 8 + hlen + end
    raw[lo:hi] = (np.frombuffer(bytes(raw[lo:hi]), dtype="<f8") * factor).tobytes()
    dst.write_bytes(bytes(raw))


def test_a_weight_multiplied_by_100_is_refused(linear, tmp_path):
    bad = tmp_path / "x100.safetensors"
    _scale_in_place(linear, bad, "coef", 100.0)
    with pytest.raises(ModelFileError) as err:
        regtorch.load(bad)
    msg = str(err.value)
    assert "integrity check failed: the weights were altered" in msg and "\n" not in msg
    regtorch.load(linear)  # the original still loads


def test_altered_metadata_are_refused_even_with_consistent_tensors(mlp, tmp_path):
    meta, record, tensors = _parts(mlp)
    meta["attributes"]["best_epoch_"] = 1
    bad = tmp_path / "meta.safetensors"
    save_file(tensors, bad, metadata={"regtorch": json.dumps(meta), INTEGRITY_KEY: record})
    with pytest.raises(ModelFileError, match="integrity check failed: the metadata were altered"):
        regtorch.load(bad)


def test_malformed_integrity_record_is_refused(linear, tmp_path):
    meta, _, tensors = _parts(linear)
    bad = tmp_path / "rec.safetensors"
    save_file(tensors, bad, metadata={"regtorch": json.dumps(meta), INTEGRITY_KEY: '{"a": 1}'})
    with pytest.raises(ModelFileError, match="integrity record is malformed"):
        regtorch.load(bad)


def test_a_file_of_the_previous_format_loads_with_a_warning(linear, tmp_path):
    """Files without the hash (before this version; the safetensors layout is unchanged)."""
    meta, _, tensors = _parts(linear)
    old = tmp_path / "old.safetensors"
    save_file(tensors, old, metadata={"regtorch": json.dumps(meta)})
    with pytest.warns(UserWarning, match="carries no integrity hash"):
        est = regtorch.load(old)
    np.testing.assert_array_equal(est.predict(X), regtorch.load(linear).predict(X))


def test_the_committed_examples_carry_an_integrity_hash():
    import warnings

    root = os.path.join(os.path.dirname(__file__), "..", "examples")
    for folder in ("output", "output-mlp"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            regtorch.load(os.path.join(root, folder, "model.safetensors"))


def _raw_file(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def test_deeply_nested_header_is_refused_before_parsing(tmp_path):
    deep = tmp_path / "deep.safetensors"
    deep.write_bytes(_raw_file(b"[" * 200_000 + b"]" * 200_000))
    with pytest.raises(ModelFileError, match="nested 200,?000 levels deep|nested 200000 levels"):
        regtorch.load(deep)
    # the same nesting inside regtorch's metadata string (a JSON document in a JSON string)
    inner = json.dumps({"__metadata__": {"regtorch": "[" * 100_000 + "]" * 100_000}}).encode()
    deep.write_bytes(_raw_file(inner))
    with pytest.raises(ModelFileError, match="metadata is nested 100000 levels deep"):
        regtorch.load(deep)
    # brackets inside strings do not count
    meta, tensors, _ = read_safetensors(dump_safetensors({}, {"s": "[" * 1000}))
    assert meta == {"s": "[" * 1000} and tensors == {}


def test_huge_header_is_refused(tmp_path):
    big = tmp_path / "big.safetensors"
    big.write_bytes(_raw_file(b'{"__metadata__": {"regtorch": "' + b"a" * (17 * 2**20) + b'"}}'))
    with pytest.raises(ModelFileError, match="header is .* bytes, more than"):
        regtorch.load(big)


def test_a_header_declaring_a_giant_network_is_refused_before_building_it(
    mlp, tmp_path, monkeypatch
):
    meta, _, tensors = _parts(mlp)
    meta["params"]["hidden_layer_sizes"] = [100_000, 100_000]
    meta["attributes"]["architecture"] = "anything"
    crafted = tmp_path / "giant.safetensors"
    crafted.write_bytes(dump_safetensors(tensors, meta))  # hashes recomputed, as an attacker can

    def no_build(*args, **kwargs):
        raise AssertionError("the declared network was built")

    monkeypatch.setattr(MLP, "__init__", no_build)
    with pytest.raises(
        ModelFileError, match="declare a network of 10,000,[0-9,]+ weights, but the file holds 41"
    ):
        regtorch.load(crafted)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_model_files_get_the_umask_permissions(linear, tmp_path, mask):
    old = os.umask(mask)
    try:
        p = regtorch.save(regtorch.load(linear), tmp_path / "m.safetensors")
        ck = Checkpoint(tmp_path / "run.ckpt", every=1)
        train(MLP(3, (4,)), X, Y[:, None], epochs=1, seed=0, device="cpu", callbacks=[ck])
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "run.ckpt").stat().st_mode & 0o777 == 0o666 & ~mask


def _checkpoint(tmp_path):
    ck = tmp_path / "run.ckpt"
    train(MLP(3, (4,)), X, Y[:, None], epochs=2, seed=0, device="cpu", callbacks=[Checkpoint(ck)])
    return ck


def test_altered_checkpoint_is_refused(tmp_path):
    ck = _checkpoint(tmp_path)
    meta, record, tensors = _parts(ck)
    name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name] = tensors[name] * 100
    save_file(tensors, ck, metadata={"regtorch": json.dumps(meta), INTEGRITY_KEY: record})
    with pytest.raises(CheckpointError, match="integrity check failed: the weights were altered"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="integrity check failed"):
        train(MLP(3, (4,)), X, Y[:, None], epochs=2, seed=0, device="cpu", resume_from=ck)


def test_checkpoint_of_the_previous_format_loads_with_a_warning(tmp_path):
    ck = _checkpoint(tmp_path)
    meta, _, tensors = _parts(ck)
    save_file(tensors, ck, metadata={"regtorch": json.dumps(meta)})
    with pytest.warns(UserWarning, match="no integrity hash"):
        load_checkpoint(ck)


def test_hash_covers_names_dtypes_and_shapes():
    a = {"w": torch.arange(4, dtype=torch.float32)}
    variants = [
        {"v": a["w"]},
        {"w": a["w"].view(torch.int32)},
        {"w": a["w"].reshape(2, 2)},
    ]
    from regtorch._files import _sha256_tensors

    digests = {_sha256_tensors(v) for v in [a, *variants]}
    assert len(digests) == 4
    assert hashlib.sha256().hexdigest() not in digests


class _Stop(Callback):
    """Ctrl-C after ``n`` complete epochs (n=0: in the middle of the first one)."""

    def __init__(self, n):
        self.n = n

    def on_train_begin(self, state):
        if self.n == 0:
            calls = []

            def hook(module, args, out):
                calls.append(1)
                if module.training and len(calls) == 2:
                    raise KeyboardInterrupt

            state.module.register_forward_hook(hook)

    def on_epoch_end(self, state):
        if state.epoch + 1 == self.n:
            raise KeyboardInterrupt


def interrupt_after(monkeypatch, n):
    """Make every MLP fit see a Ctrl-C after ``n`` complete epochs."""
    import regtorch.nn.loop as training

    real = training.train

    def train_then_ctrl_c(module, *args, callbacks=(), **kwargs):
        return real(module, *args, callbacks=[*callbacks, _Stop(n)], **kwargs)

    monkeypatch.setattr(training, "train", train_then_ctrl_c)


@pytest.mark.parametrize("n", [0, 3])
def test_a_model_interrupted_at_any_epoch_saves_loads_and_predicts(tmp_path, monkeypatch, n):
    interrupt_after(monkeypatch, n)
    with pytest.warns(UserWarning, match="interrupted"):
        est = MLPRegressor(hidden_layer_sizes=(8,), max_epochs=6, batch_size=16, random_state=0)
        est.fit(X, Y)
    assert est.history_.interrupted and est.n_iter_ == n
    back = regtorch.load(regtorch.save(est, tmp_path / "m.safetensors"))
    assert back.n_iter_ == n and back.history_.interrupted
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


def test_an_empty_history_is_refused_unless_interrupted(tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 0)
    with pytest.warns(UserWarning):
        est = MLPRegressor(hidden_layer_sizes=(8,), max_epochs=6, batch_size=16).fit(X, Y)
    meta, _, tensors = _parts(regtorch.save(est, tmp_path / "m.safetensors"))
    meta["attributes"]["history"]["interrupted"] = False
    (tmp_path / "t.safetensors").write_bytes(dump_safetensors(tensors, meta))
    with pytest.raises(ModelFileError, match="history does not match n_iter_"):
        regtorch.load(tmp_path / "t.safetensors")


def test_a_header_of_16_mib_of_brackets_is_refused_without_recursion(tmp_path):
    p = tmp_path / "brackets.safetensors"
    p.write_bytes(_raw_file(b"[" * (16 * 2**20 - 8)))
    with pytest.raises(ModelFileError, match="nested"):
        regtorch.load(p)
