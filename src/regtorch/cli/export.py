"""``regtorch export``: a saved model as an ONNX file or a ``torch.export`` program."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from regtorch.cli.present import MODEL_FILE, UserError

FORMATS = ("onnx", "pt2")


def _cmd_export(args: argparse.Namespace) -> int:
    from regtorch.cli.commands import _load

    out = Path(args.out)
    if out.is_dir():
        raise UserError(
            f"--out {out} is a folder; give the file to write, e.g. {out}/model.{args.format}."
        )
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it first.")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; use --force to replace it.")
    model = Path(args.model) / MODEL_FILE if Path(args.model).is_dir() else Path(args.model)
    if out.exists() and out.resolve() == model.resolve():
        raise UserError(f"--out {out} is the model file itself; write the export elsewhere.")
    est = _load(args.model)  # verifies the file: an altered model is refused here
    from regtorch import export

    module = export.to_torch(est)
    try:
        if args.format == "onnx":
            written = export.export_onnx(module, out)
        else:
            written = export.export_pt2(module, out)
    except ImportError as exc:
        raise UserError(str(exc)) from exc
    meta = export.export_metadata(module)
    size = written.stat().st_size
    kind = "ONNX" if args.format == "onnx" else "torch.export program"
    print(f"wrote {written} ({kind}, {size:,} bytes) from {meta['model_class']}")
    names = json.loads(meta["feature_names"])
    where = 'input "features"' if args.format == "onnx" else "input (the one argument)"
    print(f"{where}: {meta['dtype']} (n, {len(names)}), columns in order: {', '.join(names)}")
    targets = json.loads(meta.get("target_names", "null")) or ["y"]
    where = 'output "prediction"' if args.format == "onnx" else "output"
    print(f"{where}: {meta['dtype']} {meta['output_shape']}, target {', '.join(targets)}")
    print(f"note: {meta['input_note']}")
    return 0
