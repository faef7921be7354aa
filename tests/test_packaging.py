"""Packaging: the install's dependency set, the torch-only import path, the built wheel's metadata
and the docs/math.md sections that docstrings cite."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # standard library from Python 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# What `pip install stablerank` may pull in, and what the experiment suite adds.
CORE_DEPENDENCIES = {"torch", "numpy", "pyyaml", "tqdm"}
EXPERIMENTS = {"scipy", "scikit-learn", "matplotlib", "mnist1d", "torchmetrics", "submitit"}
# Import names of the packages a torch-only install lacks (plus the fidelity extra's).
BLOCKED_IMPORTS = (
    "scipy", "sklearn", "matplotlib", "mnist1d", "torchmetrics", "submitit", "torch_fidelity",
    "torchvision",
)  # fmt: skip
EXTRA_HINT = 'pip install "stablerank[experiments]"'


def _name(requirement: str) -> str:
    """Distribution name of a PEP 508 requirement, normalized (PEP 503)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def test_core_dependencies_are_torch_numpy_pyyaml_tqdm(project):
    deps = {_name(r) for r in project["project"]["dependencies"]}
    assert deps == CORE_DEPENDENCIES


def test_experiments_extra_holds_the_suite_packages(project):
    extras = project["project"]["optional-dependencies"]
    assert {_name(r) for r in extras["experiments"]} == EXPERIMENTS
    assert any(r.replace(" ", "") == "submitit>=1.5" for r in extras["experiments"])
    assert {"pytest", "hypothesis", "ruff", "pdoc"} <= {_name(r) for r in extras["dev"]}


def test_make_test_oldest_installs_the_torch_floor_of_pyproject(project):
    # `make test-oldest` checks the floor by hand; it must install the release the floor names.
    (torch,) = [r for r in project["project"]["dependencies"] if _name(r) == "torch"]
    floor = re.fullmatch(r"torch>=(\d+\.\d+)", torch.replace(" ", "")).group(1)
    oldest = re.search(r"^OLDEST_TORCH := torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert oldest and oldest.group(1).startswith(floor + "."), (torch, oldest)


def test_license_is_an_spdx_expression_with_its_file(project):
    meta = project["project"]
    assert meta["license"] == "MIT"  # SPDX string, not the deprecated table
    assert meta["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert not any(c.startswith("License ::") for c in meta.get("classifiers", []))
    setuptools_req = next(r for r in project["build-system"]["requires"] if "setuptools" in r)
    assert setuptools_req.replace(" ", "") == "setuptools>=77"  # first with PEP 639 support


def test_py_typed_ships(project):
    assert (ROOT / "src" / "stablerank" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["stablerank"]


_BLOCKED_IMPORT_SCRIPT = textwrap.dedent(
    """
    import contextlib, importlib.abc, io, pathlib, sys, tempfile
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import torch
    import stablerank
    import stablerank.data
    import stablerank.metrics
    import stablerank.cli
    import stablerank.repro.claims
    import stablerank.train.analyze
    import stablerank.train.gan_analysis
    from stablerank.config.classify import AnalyzeConfig
    from stablerank.config.gan import GanAnalysisConfig

    layer = stablerank.stable_rank_norm(torch.nn.Linear(8, 6), rank_ratio=0.5)
    out = layer(torch.randn(3, 8))
    assert out.shape == (3, 6)

    def hint(call):
        try:
            call()
        except ModuleNotFoundError as err:
            assert {hint!r} in str(err), str(err)
            return
        raise AssertionError("expected ModuleNotFoundError from " + repr(call))

    hint(lambda: stablerank.data.load_dataset("digits"))
    hint(lambda: stablerank.data.load_dataset("mnist1d"))
    hint(lambda: stablerank.metrics.plot_histogram(torch.ones(3), tempfile.mktemp(".png")))
    hint(lambda: stablerank.metrics.gan._fid(torch.randn(4, 2), torch.randn(4, 2)))
    hint(lambda: stablerank.repro.claims.welch([1.0, 2.0, 3.0], [2.0, 3.0, 5.0]))

    # The suite's commands say so before any work, not after a sweep or a training.
    for argv in (
        ["reproduce", "--preset", "tiny", "--executor", "sequential"],
        ["gan", "--preset", "quick", "--g-steps", "1"],
    ):
        out = pathlib.Path(tempfile.mkdtemp())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = stablerank.cli.main([*argv, "--out-dir", str(out)])
        assert code == 1 and {hint!r} in err.getvalue(), err.getvalue()
        assert not any(out.iterdir()), sorted(out.iterdir())
    # So do the analyses, before reading the run folder (none here).
    hint(lambda: stablerank.train.analyze.run(AnalyzeConfig(), "no-such-run"))
    hint(lambda: stablerank.train.gan_analysis.run(GanAnalysisConfig(), "no-such-run"))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("torch-only import ok")
    """
)


def test_import_and_srn_work_without_the_experiments_extra():
    script = _BLOCKED_IMPORT_SCRIPT.format(blocked=set(BLOCKED_IMPORTS), hint=EXTRA_HINT)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch-only import ok" in result.stdout


_BUILD_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    from setuptools import build_meta
    from setuptools.warnings import SetuptoolsDeprecationWarning

    # A deprecation banner (e.g. the license as a TOML table) fails the build.
    warnings.simplefilter("error", SetuptoolsDeprecationWarning)
    print(build_meta.build_wheel(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_built_wheel_metadata(tmp_path):
    """Build the wheel offline with the environment's setuptools (what pip runs, minus the
    isolated environment) from a copy of the sources, and read what pip would install."""
    # pip would build with the [build-system] floor in an isolated environment; a venv's bundled
    # setuptools may be older (65 with Python 3.11's venv) and lack what the build uses.
    pytest.importorskip("setuptools", minversion="77")
    pytest.importorskip("setuptools.build_meta")
    src = tmp_path / "project"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    dist = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-c", _BUILD_SCRIPT, str(dist)], cwd=src, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = dist.glob("stablerank-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(meta_name).decode())
    requires = metadata.get_all("Requires-Dist") or []
    unconditional = {_name(r) for r in requires if "extra ==" not in r}
    assert unconditional == CORE_DEPENDENCIES
    experiments = {_name(r) for r in requires if re.search(r"extra\s*==\s*.experiments.", r)}
    assert experiments == EXPERIMENTS
    assert metadata["License-Expression"] == "MIT"
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    assert "stablerank/py.typed" in names
    assert any(n.startswith("stablerank/metrics/weights/") for n in names)


def _make_docs_command() -> tuple[list[str], list[str]]:
    """(pdoc options, modules) of the Makefile's ``docs`` recipe, so the test builds what
    ``make docs`` builds."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    modules = re.search(r"^DOC_MODULES\s*:=(.*)$", makefile, flags=re.MULTILINE).group(1).split()
    recipe = re.search(r"-m pdoc (.*?) -o \$\(DOCS_DIR\)", makefile).group(1).split()
    return recipe, modules


@pytest.mark.slow
def test_api_docs_build(tmp_path):
    """``make docs`` works: pdoc imports every public module and renders every docstring."""
    pytest.importorskip("pdoc")
    options, modules = _make_docs_command()
    assert "stablerank" in modules and "stablerank.metrics" in modules
    result = subprocess.run(
        [sys.executable, "-m", "pdoc", *options, "-o", str(tmp_path), *modules],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Every public module has its page: pdoc leaves out a package's submodules that its __all__
    # does not name (config, data, metrics and models name their contents, not their modules).
    public = {
        ".".join(path.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "src" / "stablerank").rglob("*.py")
        if not any(part.startswith("_") and part != "__init__.py" for part in path.parts[-2:])
    }
    for module in sorted(public):
        page = tmp_path / (module.replace(".", "/") + ".html")
        assert page.is_file(), f"no page for {module}: add it to the Makefile's DOC_MODULES"
    # Maths in docstrings is rendered (``.. math::`` becomes a display formula).
    assert "$$" in (tmp_path / "stablerank" / "metrics.html").read_text()


def test_docstring_citations_of_docs_math_exist():
    """Every ``docs/math.md §N`` (or §N.M) cited in the package names a heading of that file."""
    math_md = (ROOT / "docs" / "math.md").read_text()
    headings = set(re.findall(r"^#+ §(\d+(?:\.\d+)?)\b", math_md, flags=re.MULTILINE))
    cited: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "stablerank").rglob("*.py"):
        for match in re.finditer(r"docs/math\.md((?:,? ?§\d+(?:\.\d+)?)+)", path.read_text()):
            for section in re.findall(r"§(\d+(?:\.\d+)?)", match.group(1)):
                cited.setdefault(section, set()).add(path.name)
    assert cited, "no docstring cites docs/math.md"
    missing = {s: sorted(f) for s, f in cited.items() if s not in headings}
    assert not missing, f"docs/math.md has no section for {missing}"


def test_the_readmes_library_example_runs(capsys):
    """The README's Python example is code a newcomer pastes: it must run as written."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "the README has no Python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "srank" in capsys.readouterr().out  # the layer report was printed
