"""Count the lines of the orchestration layer (issue 9), as docs/reproduction.md reports them.

The layer is everything in ``src/stablerank`` outside the SRN core files, ``data/``, ``models/``
and ``metrics/``: ``config/``, ``train/``, ``repro/``, ``cli.py``, ``__main__.py`` and
``__init__.py``. Prints the raw lines split by kind (blank, docstrings of modules, classes and
functions, comment lines, top-level imports, ``__all__``, the rest), the lines of each job, and
the raw lines of the optional features a smaller layer could drop (whole functions and classes).

Usage: ``python scripts/orchestration_size.py [SRC_ROOT]`` (default ``src/stablerank``).
"""

from __future__ import annotations

import ast
import io
import signal
import sys
import tokenize
from pathlib import Path

JOBS = {
    "configs": ["config/*.py"],
    "trainers, GAN building, sampling, scoring": [
        "train/classify.py",
        "train/gan.py",
        "train/gan_models.py",
        "train/gan_sampling.py",
        "train/gan_scores.py",
    ],
    "analyses": ["train/analyze.py", "train/gan_analysis.py"],
    "run folder, checkpoints, logs, results, runtime, figures": [
        "train/rundir.py",
        "train/checkpoint.py",
        "train/records.py",
        "train/results.py",
        "train/runtime.py",
        "train/figures.py",
        "train/__init__.py",
    ],
    "reproduction": ["repro/*.py"],
    "CLI and package": ["cli.py", "__main__.py", "__init__.py"],
}
# Feature -> (file, top-level functions and classes); None = the whole file. "figures" leaves out
# save_image_grid, which the GAN trainer's sample grids need.
FEATURES = {
    "parallel and cluster executors": [
        ("repro/executors.py", None),
        ("repro/execute.py", ["_output_to", "_threads"]),
    ],
    "figures": [
        ("repro/report.py", ["_curve_plot", "_effects_plot", "_seeds_plot", "_figures"]),
        ("train/analyze.py", ["_write_plots", "plot_shattering", "_run_label"]),
        ("train/figures.py", ["new_figure", "save_figure"]),
    ],
    "logs beyond JSONL, environment record": [
        ("train/records.py", ["MetricLog", "git_commit", "environment_info", "_cell"]),
    ],
    "claims statistics beyond one Welch test": [
        (
            "repro/claims.py",
            ["holm", "_power", "seeds_needed", "detectable_effect", "sn_above_target"],
        ),
        ("repro/report.py", ["_what_seeds_decide"]),
    ],
    "DDP": [
        ("train/runtime.py", ["DistInfo", "die_with_parent", "init_distributed", "end_worker"]),
        ("repro/execute.py", ["_train"]),
    ],
    "Ctrl-C at the step reached": [("train/runtime.py", ["deferred_sigint", "interrupted"])],
    "per-layer stable-rank table": [("repro/report.py", ["_srank_table"])],
    "plain progress lines": [("train/runtime.py", ["ProgressLine"])],
}
# Kept by a layer without the executors above: one process, one run after another.
_EXECUTOR_CORE = ["Executor", "SequentialExecutor", "make_executor", "print_outcome"]


def kinds(source: str) -> dict[str, int]:
    """Raw lines of one file split by kind."""
    lines = source.splitlines()
    tree = ast.parse(source)
    kind: dict[int, str] = {i: "blank" for i, line in enumerate(lines, 1) if not line.strip()}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                kind.update(dict.fromkeys(range(first.lineno, first.end_lineno + 1), "doc"))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip().startswith("#"):
            kind[tok.start[0]] = "comment"
    for node in tree.body:
        is_all = isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "__all__" for t in node.targets
        )
        if is_all or isinstance(node, (ast.Import, ast.ImportFrom)):
            label = "__all__" if is_all else "imports"
            kind.update(dict.fromkeys(range(node.lineno, node.end_lineno + 1), label))
    counts = dict.fromkeys(("blank", "doc", "comment", "imports", "__all__"), 0)
    for label in kind.values():
        counts[label] += 1
    return {"raw": len(lines), **counts, "code": len(lines) - sum(counts.values())}


def def_lines(path: Path) -> dict[str, int]:
    """Raw lines of each top-level function and class of ``path`` (decorators included)."""
    tree = ast.parse(path.read_text())
    return {
        node.name: node.end_lineno - node.lineno + 1 + len(node.decorator_list)
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


def main(root: Path) -> None:
    if not (root / "srn.py").is_file():
        sys.exit(f"{root} is not the package's source folder (it has no srn.py); see --help")
    by_job = {job: sorted({p for g in globs for p in root.glob(g)}) for job, globs in JOBS.items()}
    files = [p for paths in by_job.values() for p in paths]
    total = dict.fromkeys(("raw", "blank", "doc", "comment", "imports", "__all__", "code"), 0)
    for path in files:
        for k, v in kinds(path.read_text()).items():
            total[k] += v
    print(f"{len(files)} files: " + ", ".join(f"{k} {v:,}" for k, v in total.items()))
    for job, paths in by_job.items():
        print(f"  {sum(len(p.read_text().splitlines()) for p in paths):6,}  {job}")
    dropped = 0
    for feature, parts in FEATURES.items():
        n = 0
        for rel, names in parts:
            path = root / rel
            if names is None:  # the whole file but for what a one-process layer keeps
                n += len(path.read_text().splitlines())
                n -= sum(v for k, v in def_lines(path).items() if k in _EXECUTOR_CORE)
            else:
                n += sum(def_lines(path)[name] for name in names)
        dropped += n
        print(f"  {n:6,}  optional: {feature}")
    print(f"without every optional feature: about {total['raw'] - dropped:,} raw lines")


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly, as it does `cat`
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "src/stablerank"))
