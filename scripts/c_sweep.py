"""Where does the stable-rank cap bind? Train small models at several rank ratios c and record,
per normalized layer, the raw weight's stable rank against SRN's target r = c * min(m, n).

Writes one JSON line per run to OUT/c_sweep.jsonl (resumable: finished runs are skipped) and a
markdown table to OUT/c_sweep.md. Used to choose the reproduction sweeps' rank ratios
(docs/c_sweep.md records the numbers).

Usage: python scripts/c_sweep.py OUT [--only mlp,mlp_shatter,small_cnn,alexnet,gan]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

RATIOS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def classifier_settings() -> dict[str, dict]:
    common = {
        "dataset": "fashion-mnist",
        "train_subset": 4000,
        "train_eval_size": 0,
        "test_eval_size": 2000,
        "augment": "none",
        "weight_decay": 0.0,
        "optimizer": "sgd",
        "batch_size": 128,
        "num_threads": 1,
        "progress": False,
    }
    return {
        # BN-free MLP on clean labels, trained to ~100% train accuracy.
        "mlp": {**common, "model": "mlp", "epochs": 30, "lr": 0.05, "schedule": "cosine"},
        # The quick shattering protocol: MLP on 1,500 random labels.
        "mlp_shatter": {
            **common,
            "model": "mlp",
            "epochs": 30,
            "lr": 0.05,
            "schedule": "none",
            "label_noise": 1.0,
            "train_subset": 1500,
        },
        # BN network (BN undoes the SN scale) at half width.
        "small_cnn": {
            **common,
            "model": "small_cnn",
            "width": 0.5,
            "epochs": 6,
            "lr": 0.05,
            "schedule": "cosine",
        },
        # BN-free AlexNet (Zhang et al.) at half width.
        "alexnet": {
            **common,
            "model": "alexnet",
            "width": 0.5,
            "epochs": 6,
            "lr": 0.02,
            "schedule": "cosine",
        },
    }


def layer_rows(layers) -> list[dict]:
    """The SRN layers of a typed result (stablerank.train.results.LayerStat)."""
    return [
        {
            "name": x.name,
            "shape": list(x.shape),
            "raw_srank": x.raw_srank,
            "target": x.target_srank,
            "binds": x.active,  # None where the cap can never act (r >= min(m, n))
        }
        for x in layers
        if x.norm == "srn"
    ]


def run_classifier(name: str, settings: dict, norm: str, c: float | None, runs: Path) -> dict:
    from stablerank.config import config_from_dict
    from stablerank.config.classify import ClassifyConfig
    from stablerank.train import classify

    cfg = config_from_dict(
        ClassifyConfig,
        {
            **settings,
            "norm": norm,
            **({"rank_ratio": c} if c else {}),
            "out_dir": str(runs),
            "run_name": f"{name}_{norm}{c or ''}",
        },
    )
    result = classify.run(cfg)
    layers = layer_rows(result.layers)
    return {
        "setting": name,
        "norm": norm,
        "c": c,
        "train_acc": result.train_acc,
        "test_acc": result.test_acc,
        "gap_acc": result.gap_acc,
        "layers": layers,
        "binding_fraction": binding_fraction(layers),
    }


def run_gan(norm: str, c: float | None, runs: Path) -> dict:
    from stablerank.config import config_from_dict
    from stablerank.config.gan import GAN_PRESETS, GanConfig
    from stablerank.train import gan

    cfg = config_from_dict(
        GanConfig,
        {
            **GAN_PRESETS["quick"],
            "ngf": 16,
            "ndf": 16,
            "g_steps": 300,
            "n_final_samples": 0,
            "n_eval_samples": 2,
            "sample_every": 300,
            "checkpoint_every": 300,
            "d_norm": norm,
            **({"rank_ratio": c} if c else {}),
            "out_dir": str(runs),
            "run_name": f"gan_{norm}{c or ''}",
            "progress": False,
        },
    )
    torch.set_num_threads(1)
    layers = layer_rows(gan.run(cfg).d_layers)
    return {
        "setting": "gan_quick_d",
        "norm": norm,
        "c": c,
        "layers": layers,
        "binding_fraction": binding_fraction(layers),
    }


def _binds(layer: dict) -> bool | None:
    """Whether the cap binds; None where it never can (r >= min(m, n): SRN is SN there). Read
    off the numbers, for the rows written before "binds" was None there."""
    if layer["target"] >= min(layer["shape"]):
        return None
    return layer["raw_srank"] > layer["target"]


def binding_fraction(layers: list[dict]) -> float | None:
    """The fraction of the layers whose cap can act that it binds on (None: no such layer)."""
    flags = [b for b in map(_binds, layers) if b is not None]
    return sum(flags) / len(flags) if flags else None


def write_table(rows: list[dict], path: Path) -> None:
    """Markdown: per setting and c, the fraction of layers whose cap binds and the accuracies."""
    lines = [
        "| setting | arm | layers where the cap binds | raw srank / target per layer "
        "| train acc | test acc | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    order = {"none": -2.0, "sn": -1.0}
    rows = sorted(rows, key=lambda r: (settings.index(r["setting"]), order.get(r["norm"], r["c"])))
    for r in rows:
        arm = f"srn c={r['c']:g}" if r["c"] else r["norm"]
        flags = [b for b in map(_binds, r["layers"]) if b is not None]
        frac = f"{sum(flags)}/{len(flags)}" if flags else "-"
        per_layer = (
            ", ".join(
                f"{x['raw_srank']:.1f}/{x['target']:.1f}"
                for x in r["layers"]
                if _binds(x) is not None
            )
            or "-"
        )
        acc = [r.get(k) for k in ("train_acc", "test_acc", "gap_acc")]
        cells = [f"{100 * a:.1f}" if a is not None else "-" for a in acc]
        lines.append(
            f"| {r['setting']} | {arm} | {frac} | {per_layer} | " + " | ".join(cells) + " |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("out", help="folder of c_sweep.jsonl, c_sweep.md and the runs")
    p.add_argument("--only", default="mlp,mlp_shatter,gan,small_cnn,alexnet",
                   help="comma-separated settings to train (default: all of them)")  # fmt: skip
    p.add_argument("--table", action="store_true", help="only write OUT/c_sweep.md")
    args = p.parse_args()
    out = Path(args.out)
    if args.table:
        if not (out / "c_sweep.jsonl").is_file():
            p.error(f"--table reads {out / 'c_sweep.jsonl'}, which does not exist")
        rows = [json.loads(x) for x in (out / "c_sweep.jsonl").read_text().splitlines()]
        write_table(rows, out / "c_sweep.md")
        return
    known = ["gan", *classifier_settings()]
    if unknown := [name for name in args.only.split(",") if name not in known]:
        p.error(f"--only: unknown setting(s) {unknown}; known: {','.join(known)}")
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "c_sweep.jsonl"
    done = set()
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            done.add((r["setting"], r["norm"], r["c"]))
    settings = classifier_settings()
    for name in args.only.split(","):
        for norm, c in [("none", None), ("sn", None), *[("srn", c) for c in RATIOS]]:
            key = ("gan_quick_d" if name == "gan" else name, norm, c)
            if key in done:
                continue
            t0 = time.time()
            if name == "gan":
                if norm == "none" or (c is not None and c < 0.05):
                    continue
                row = run_gan(norm, c, out / "runs")
            else:
                row = run_classifier(name, settings[name], norm, c, out / "runs")
            row["seconds"] = time.time() - t0
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{key}: binding {row['binding_fraction']} ({row['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    main()
