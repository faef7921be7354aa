"""Train the offline feature network "fmnist-cnn" and write its weights + JSON sidecar.

The network (``stablerank.metrics.features.FashionCNN``) is trained on the Fashion-MNIST train
split only; the test split is used once, at the end, to record the test accuracy (no model
selection on it). Inputs are scaled to [-1, 1] (the metrics' image contract). Augmentation:
random horizontal flip and, when ``--shift`` > 0, random translation by up to that many pixels
(padding with the background value -1), per sample, on tensors. The shipped weights use no
translation (``--shift 0``; with 1 pixel the 7-epoch schedule underfits: 92.8% test accuracy).

Reproduce the shipped weights (about 12 CPU-minutes on one thread; ``--out-dir`` is required, so
that a trial run never replaces them; their sidecar's command predates that)::

    python scripts/train_feature_net.py --out-dir src/stablerank/metrics/weights

Writes ``<out-dir>/fmnist_cnn.pt`` (state dict) and ``<out-dir>/fmnist_cnn.json`` (architecture,
test accuracy, sha256, command, versions, timing).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stablerank.data.datasets import load_dataset
from stablerank.metrics.features import FMNIST_CNN_WEIGHTS, FashionCNN, sha256_file

ARCHITECTURE = {
    "in_channels": 1,
    "num_classes": 10,
    "widths": [32, 64, 128],
    "feature_dim": 128,
    "image_size": 28,
    "dropout": 0.2,
}
_PIXEL_HALF = 127.5
_EVAL_BATCH = 1000
_PCT_WARMUP = 0.25  # fraction of the one-cycle schedule spent increasing the lr
_PAD_VALUE = -1.0  # background of Fashion-MNIST in [-1, 1]
_FMNIST_TRAIN = 60_000  # training images of Fashion-MNIST


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=7, help="training epochs (>= 1)")
    p.add_argument("--batch-size", type=int, default=128, help="(>= 1)")
    p.add_argument("--lr", type=float, default=0.1, help="peak lr of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--shift", type=int, default=0, help="max random translation in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: system one)")
    p.add_argument("--out-dir", type=Path, required=True, help="where fmnist_cnn.pt and .json "
                   f"go (the shipped ones: {FMNIST_CNN_WEIGHTS.parent})")  # fmt: skip
    p.add_argument("--max-train", type=int, default=None, help="use the first N train images")
    p.add_argument("--max-test", type=int, default=None, help="score the first N test images")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    for flag in ("epochs", "batch_size", "threads", "max_train", "max_test"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.shift < 0:
        p.error(f"--shift must be >= 0, got {args.shift}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    # One-cycle's warm-up must hold at least two steps (OneCycleLR divides by its length - 1).
    images = min(args.max_train or _FMNIST_TRAIN, _FMNIST_TRAIN)
    steps = args.epochs * math.ceil(images / args.batch_size)
    if steps * _PCT_WARMUP < 2:
        p.error(f"{steps} optimizer steps (--epochs x images / --batch-size) are too few for the "
                f"one-cycle schedule: at least {math.ceil(2 / _PCT_WARMUP)}")  # fmt: skip
    return args


def to_unit(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float() / _PIXEL_HALF - 1.0


def augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample horizontal flip and translation by up to ``shift`` pixels. x: (N, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if shift == 0:
        return x
    padded = F.pad(x, (shift,) * 4, value=_PAD_VALUE)  # (N, C, H+2s, W+2s)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    idx = torch.arange(n)[:, None, None, None]
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return padded[idx, chans, rows, cols]


@torch.no_grad()
def accuracy(net: FashionCNN, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    net.eval()
    correct = 0
    for xb, yb in zip(x.split(_EVAL_BATCH), y.split(_EVAL_BATCH), strict=True):
        correct += (net(to_unit(xb).to(device)).argmax(1).cpu() == yb).sum().item()
    return correct / len(y)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    try:
        data = load_dataset("fashion-mnist", args.data_dir)
    except FileNotFoundError as err:  # the message says where it looked and what to do
        raise SystemExit(f"train_feature_net.py: error: {err}") from None
    train_x, train_y = data.train_x, data.train_y
    if args.max_train is not None:
        train_x, train_y = train_x[: args.max_train], train_y[: args.max_train]
    net = FashionCNN(**{**ARCHITECTURE, "widths": tuple(ARCHITECTURE["widths"])}).to(device)
    opt = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_y) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=_PCT_WARMUP
    )
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(train_y), generator=gen)
        total, seen = 0.0, 0
        for idx in perm.split(args.batch_size):
            xb = augment(to_unit(train_x[idx]), args.shift, gen).to(device)
            yb = train_y[idx].to(device)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total / seen:.4f} "
            f"elapsed {time.time() - start:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    train_seconds = time.time() - start
    test_x, test_y = data.test_x[: args.max_test], data.test_y[: args.max_test]
    test_acc = accuracy(net, test_x, test_y, device)
    train_acc = accuracy(net, train_x, train_y, device)
    print(f"test accuracy {test_acc:.4f}  train accuracy {train_acc:.4f}", file=sys.stderr)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights = args.out_dir / "fmnist_cnn.pt"
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save(state, weights)
    sidecar = {
        "name": "fmnist-cnn",
        "file": weights.name,
        "sha256": sha256_file(weights),
        "architecture": ARCHITECTURE,
        "input": "float (N, 1, 28, 28) in [-1, 1] (uint8 / 127.5 - 1)",
        "features": f"penultimate layer, {ARCHITECTURE['feature_dim']} units (after BN + ReLU)",
        "train_split": "fashion-mnist train"
        + (f" first {args.max_train}" if args.max_train else ""),
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "command": "python scripts/train_feature_net.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("out_dir",)},
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "device": str(device),
    }
    weights.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    print(json.dumps({"weights": str(weights), "test_accuracy": test_acc}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
