"""The ``regtorch`` command line. The only package that prints.

Heavy libraries (torch, scikit-learn, matplotlib, pyarrow) are imported inside the commands,
so ``regtorch --help`` and argument errors answer at once. Every problem a user can cause
ends with one line on stderr and exit code 2 (``--debug`` shows the traceback); so does a
failed write to standard output (closed, full). A reader that leaves early
(``regtorch predict ... --out - | head``) ends the command quietly with exit code 141, the
shell's code for SIGPIPE, so that ``set -o pipefail`` can tell the output was cut.

Modules: :mod:`~regtorch.cli.parser` (flags), :mod:`~regtorch.cli.fit` and
:mod:`~regtorch.cli.streamed` (``fit``), :mod:`~regtorch.cli.commands` (the other commands),
:mod:`~regtorch.cli.present` (tables, JSON, standard output, the output folder) and
:mod:`~regtorch.cli.baseline` (the least-squares baseline row).
"""

from __future__ import annotations

import os
import re
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

from regtorch.cli.commands import _cmd_demo, _cmd_evaluate, _cmd_summary
from regtorch.cli.fit import _cmd_fit
from regtorch.cli.parser import build_parser
from regtorch.cli.present import (
    UserError,
    _json,
    _metrics,
    _say,
    _Stdout,
    demo_tables,
    format_table,
    strict_metrics,
)

__all__ = [
    "UserError",
    "_json",
    "_metrics",
    "_say",
    "build_parser",
    "demo_tables",
    "format_table",
    "main",
    "strict_metrics",
]

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer killed by a closed pipe


def _one_line_warning(
    message: Any,
    category: Any,
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"regtorch: warning: {message}", file=sys.stderr)


def _check_stdout_open(args: Any) -> None:
    """Refuse to run a command whose results go to a closed standard output."""
    if sys.stdout is not None:
        return
    if args.func in (_cmd_summary, _cmd_evaluate):
        raise UserError("standard output is closed; nothing was written (keep stdout open).")
    if args.func in (_cmd_fit, _cmd_demo) and getattr(args, "out", None) is None:
        raise UserError("standard output is closed; nothing was written (give --out DIR).")


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the flush at exit cannot fail on a closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# modules that scikit-learn imports at start-up but uses only inside functions that a
# regtorch command never calls: loaded on first use instead (scipy.stats alone is ~0.5 s)
DEFERRED_MODULES = ("scipy.stats",)


class _Deferred(types.ModuleType):
    """Stands in for a module until one of its names is read, then imports it for real."""

    def __getattr__(self, attr: str) -> Any:
        import importlib

        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)  # binds the real module to its parent too
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _defer_imports(names: Sequence[str] = DEFERRED_MODULES) -> None:
    """Make ``import NAME`` cheap until one of the module's names is used.

    The module then runs its code, unchanged, and everything refers to it; only when it
    loads differs. Names already imported, or not installed, are left alone.
    """
    import importlib
    import importlib.util

    for name in names:
        if name in sys.modules:
            continue
        parent, _, child = name.rpartition(".")
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        stand_in = _Deferred(name)
        # what inspect and the import system read without using the module
        stand_in.__file__ = spec.origin
        stand_in.__spec__ = spec
        stand_in.__loader__ = spec.loader
        if spec.submodule_search_locations is not None:
            stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stand_in
        if parent:
            setattr(sys.modules[parent], child, stand_in)


# options whose value is a list of numbers: "-1,2" would read as an option to argparse
_LIST_OPTIONS = ("--alphas", "--l1-ratio")


def _join_signed_lists(argv: list[str]) -> list[str]:
    """``--alphas -1,2`` as ``--alphas=-1,2``, so the value is checked (and refused with
    its own message) instead of argparse's "expected one argument"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _LIST_OPTIONS and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regtorch`` command.

    Warnings print as one line each while the command runs; the previous
    ``warnings.showwarning`` comes back when ``main`` returns or raises, so a program or
    notebook that calls ``main`` keeps its own warning display.
    """
    parser = build_parser()
    args = parser.parse_args(_join_signed_lists(sys.argv[1:] if argv is None else list(argv)))
    _defer_imports()
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return _run(args)
    finally:
        warnings.showwarning = previous


def _run(args: Any) -> int:
    """Run the parsed command; every failure becomes one line on stderr and an exit code."""
    from regtorch.outputs import InterruptedFit

    try:
        _check_stdout_open(args)
        _Stdout.broken = False
        code = int(args.func(args))
        if sys.stdout is not None:
            sys.stdout.flush()  # a write error still pending is an error, not exit 0
        return EXIT_BROKEN_PIPE if _Stdout.broken and code == 0 else code
    except KeyboardInterrupt:
        print("regtorch: interrupted", file=sys.stderr)
        return 130
    except InterruptedFit as exc:  # Ctrl-C stopped the training loop, which kept its weights
        print(f"regtorch: interrupted: {exc}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `regtorch predict ... --out - | head`: the reader left
        # quietly, with the shell's code for SIGPIPE, so `set -o pipefail` sees the cut
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            raise
        user = isinstance(exc, (UserError, ValueError, TypeError, OSError))
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not user:
            msg = f"internal error ({type(exc).__name__}): {msg}; rerun with --debug for details"
        print(f"regtorch: error: {msg}", file=sys.stderr)
        return EXIT_USAGE if user else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
