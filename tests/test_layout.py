"""The package layout: old module paths still work and say where their names went."""

import importlib

import pytest


@pytest.mark.parametrize(
    "old, name, new",
    [
        ("regtorch.streaming", "TableSource", "regtorch.data"),
        ("regtorch.streaming", "stream_fit_linear", "regtorch.linear"),
        ("regtorch.streaming", "stream_fit_mlp", "regtorch.nn"),
        ("regtorch.training", "train", "regtorch.nn.loop"),
        ("regtorch.modules", "MLP", "regtorch.nn.modules"),
        ("regtorch.estimators", "MLPRegressor", "regtorch.nn"),
        ("regtorch.solvers", "RankWarning", "regtorch.linear.solvers"),
    ],
)
def test_old_paths_warn_and_name_the_new_place(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"moved to {new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_name_the_old_module_never_had_is_an_attribute_error():
    import regtorch.streaming

    with pytest.raises(AttributeError, match="is gone"):
        regtorch.streaming.nothing_here  # noqa: B018


def test_no_import_cycle_between_modules():
    """Module-level imports between regtorch's modules form no cycle (lazy imports aside)."""
    import ast
    from pathlib import Path

    import regtorch

    root = Path(regtorch.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.parse(path.read_text()).body:  # top level only
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("regtorch")
            ):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = deps
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}

    def visit(node, stack):
        assert node not in stack, " -> ".join([*stack, node])
        for d in graph[node]:
            visit(d, [*stack, node])

    for node in graph:
        visit(node, [])


def test_no_module_over_600_lines_and_no_function_over_80():
    """The size limits the engine issue set (a module or function past them is split)."""
    import ast
    from pathlib import Path

    import regtorch

    too_long = []
    for path in sorted(Path(regtorch.__file__).parent.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 600:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, too_long
