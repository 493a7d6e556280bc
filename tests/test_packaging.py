"""Packaging: one version, floors proven by ci/lowest.txt, the wheel's contents, own docs."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
        pins[req.name.lower()] = Version(spec.version)
    return pins


def _floors() -> dict[str, Version]:
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    floors = {}
    for text in [*project["dependencies"], *extras["export"], *extras["tensorboard"]]:
        req = Requirement(text)
        lower = [s for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"dependency {text!r} has no single '>=' floor"
        floors[req.name.lower()] = Version(lower[0].version)
    return floors


def test_declared_floors_equal_the_lowest_pins():
    pins = _pins(ROOT / "ci" / "lowest.txt")
    floors = _floors()
    assert set(pins) == set(floors), (
        "ci/lowest.txt and pyproject's dependencies (with the export and tensorboard extras) "
        "name different packages"
    )
    # torch stays at the CPU wheel CI installs; every other pin is exactly its declared floor.
    assert pins.pop("torch") == _pins(ROOT / "constraints.txt")["torch"]
    assert floors.pop("torch") <= Version("2.13.0")
    assert pins == floors


def test_floors_cover_what_the_code_needs():
    floors = _floors()
    assert floors["scikit-learn"] >= Version("1.6")  # validate_data, target tags
    assert floors["pyarrow"] >= Version("16")  # RecordBatch.to_tensor(null_to_nan=...)
    build = [Requirement(r) for r in _pyproject()["build-system"]["requires"]]
    (setuptools,) = [r for r in build if r.name == "setuptools"]
    assert setuptools.specifier.contains("77") and not setuptools.specifier.contains("76.9")


def test_version_has_one_source():
    import regtorch
    from regtorch import _version

    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "regtorch._version.__version__"
    assert regtorch.__version__ == _version.__version__
    assert Version(regtorch.__version__) >= Version("0.2.0")
    # No other file of the package writes a version string of its own.
    pattern = re.compile(r"__version__\s*=")
    writers = [
        p.name
        for p in (ROOT / "src" / "regtorch").rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert writers == ["_version.py"]


def test_version_import_stays_light():
    code = "import sys, regtorch; print(regtorch.__version__, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    from regtorch._version import __version__

    assert proc.stdout.split() == [__version__, "False"]


def test_changelog_has_this_version():
    from regtorch._version import __version__

    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{__version__}]" in text
    assert "## [0.1.0]" in text


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the regtorch developers" in text
    assert _pyproject()["project"]["license"] == "MIT"


def test_ci_runs_the_lowest_versions_after_the_tests():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.index("make test\n") < ci.index("make test-lowest")
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-c ci/lowest.txt" in make
    assert "'.[dev,bench,export,tensorboard]'" in make
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"dev", "bench", "export", "tensorboard"} <= set(extras)


@pytest.mark.slow
def test_wheel_ships_types_license_and_version(tmp_path):
    """Build the wheel from a copy of the tree and read what it holds."""
    setuptools = pytest.importorskip("setuptools")
    if Version(setuptools.__version__) < Version("77"):
        pytest.skip("building needs setuptools >= 77 in this environment")
    src = tmp_path / "tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "src" / "regtorch",
        src / "src" / "regtorch",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from regtorch._version import __version__

    (whl,) = out.glob("regtorch-*.whl")
    assert whl.name.startswith(f"regtorch-{__version__}-py3-none-any")
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        dist = f"regtorch-{__version__}.dist-info"
        meta = email.message_from_bytes(zf.read(f"{dist}/METADATA"))
        entry_points = zf.read(f"{dist}/entry_points.txt").decode()
    assert "regtorch/py.typed" in names and "regtorch/_version.py" in names
    assert f"{dist}/licenses/LICENSE" in names
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert {"export", "tensorboard"} <= set(meta.get_all("Provides-Extra"))
    requires = {Requirement(r).name: Requirement(r) for r in meta.get_all("Requires-Dist")}
    assert str(requires["scikit-learn"].specifier) == ">=1.6"
    assert "Typing :: Typed" in meta.get_all("Classifier")
    urls = meta.get_all("Project-URL")
    assert any(u.startswith("Homepage, https://github.com/regtorch/regtorch") for u in urls)
    assert "regtorch = regtorch.cli:main" in entry_points


_OUTSIDE = re.compile(r"shared/REFERENCE\.md|\.\./shared|(?<![\w/-])REFERENCE\.md")
# The vendored NIST data's provenance note says where it was copied from, on purpose.
_PROVENANCE = {Path("tests/data/nist/SOURCE.md")}


def _project_text_files():
    yield ROOT / "README.md"
    yield ROOT / "CHANGELOG.md"
    for folder in ("src", "tests", "docs", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT)
            if any(part.endswith(".egg-info") or part == "__pycache__" for part in rel.parts):
                continue
            if path.is_file() and path.suffix in {".py", ".md", ".txt", ".toml", ".cfg"}:
                yield path


def test_docs_cite_only_files_in_the_repository():
    this = Path(__file__).resolve()
    offenders = [
        str(p.relative_to(ROOT))
        for p in _project_text_files()
        if p.resolve() != this
        and p.relative_to(ROOT) not in _PROVENANCE
        and _OUTSIDE.search(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []
    cited = set()
    for p in _project_text_files():
        cited |= set(
            re.findall(r"docs/[\w.-]+\.md", p.read_text(encoding="utf-8", errors="replace"))
        )
    assert "docs/reference-protocol.md" in cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert missing == []


def test_reference_protocol_states_the_recipe_and_figures():
    text = (ROOT / "docs" / "reference-protocol.md").read_text(encoding="utf-8")
    for fact in (
        "n_samples=1200",
        "noise=2",
        "test_size=0.20, random_state=42",
        "Rows 1000..1199",
        "lr=0.001",
        "10,000 epochs",
        "1 -> 8 -> 8 -> 8 -> 1",
        "4.3867",
        "3.0133",
        "0.794385",
        "4.21838",
        "0.9769",
        "0.01179",
    ):
        assert fact in text, fact


def test_readme_install_paths():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in text
    assert "python -m pip install ." in text
    assert "'.[export]'" in text and "'.[tensorboard]'" in text


def test_every_public_name_resolves():
    import regtorch

    missing = [name for name in regtorch.__all__ if getattr(regtorch, name, None) is None]
    assert missing == []
    assert issubclass(regtorch.RankWarning, regtorch.RegtorchWarning)
    assert issubclass(regtorch.RegtorchWarning, UserWarning)


def test_cli_version_flag_prints_the_version():
    import subprocess
    import sys

    from regtorch._version import __version__

    out = subprocess.run(
        [sys.executable, "-m", "regtorch", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"regtorch {__version__}"
