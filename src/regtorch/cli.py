"""The ``regtorch`` command line. The only module that prints.

Heavy libraries (torch, scikit-learn, matplotlib) are imported inside the commands, so
``regtorch --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
METHOD_LABELS = {
    "sklearn": "scikit-learn LinearRegression",
    "reference": "reference recipe (Adam 1e-3, 10k epochs)",
    "fast": "regtorch fast default",
}


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )
    return "\n".join(out)


def demo_tables(results: dict[str, dict[str, Any]]) -> str:
    """The demo's tables, one per experiment."""
    parts = []
    for exp, methods in results.items():
        rows = []
        for key, m in methods.items():
            rows.append(
                [
                    METHOD_LABELS.get(key, key),
                    m.get("weight"),
                    m.get("bias"),
                    m["r2"],
                    m["mse"],
                    m["epochs"],
                    round(m["seconds"], 3),
                ]
            )
        parts.append(
            f"Experiment: {exp}\n"
            + format_table(
                ["method", "weight", "bias", "test R2", "test MSE", "epochs", "seconds"], rows
            )
        )
    return "\n\n".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    from regtorch.experiments import run_demo

    results = run_demo(out=args.out, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(demo_tables(results))
    if args.out:
        print(f"\nPlots and results.json written to {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="regtorch", description="Regression with PyTorch: exact linear models, fast MLPs."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", help="reproduce the reference experiments (line, sine) side by side"
    )
    demo.add_argument("--out", metavar="DIR", help="write plots and results.json to DIR")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regtorch`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("regtorch: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, FileNotFoundError, OSError) as exc:
        if args.debug:
            raise
        print(f"regtorch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
