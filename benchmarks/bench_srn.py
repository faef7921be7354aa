"""Cost of SRN against no normalization and torch's spectral_norm, measured interleaved.

Times, in one process and interleaved round by round (so machine noise hits every variant alike):
  1. a training step (forward, backward, SGD step) of a small CNN and of ResNet-20 on 28x28
     one-channel inputs, batch 128, for: none, torch spectral_norm (sn), SRN by power iteration
     (srn), the same with the composite formula forced (srn-composite: the path under
     torch.compile / torch.func), SRN by SVD (srn-exact); printed as ratios to none;
  2. eval-mode forward (under no_grad) ratios to none;
  3. the normalization work alone: computing every normalized weight in training mode (with
     autograd recording, as in a training step, no forward), and the same plus its backward,
     as ratios to torch sn's (``--work-only`` times just these, quickly).

  4. ``--kernels``: the kernels (leaf aten ops, views excluded) one training step launches per
     layer for torch sn and SRN (forward with power iteration, backward), counted with
     torch.profiler on the device given;
  5. ``--activity``: at initialization, the fraction of normalized layers whose SRN cap binds
     (raw stable rank > r = c * min(m, n)) for each c, on the project's models (no timing).

Usage: python benchmarks/bench_srn.py [--rounds 7] [--steps 3] [--models small_cnn resnet20]
                                     [--device cuda] [--threads N] [--work-only] [--eval-only]
                                     [--kernels] [--activity] [--cifar] [--amp]
                                     [--variants none sn srn]
``--cifar`` times CIFAR-size steps (3x32x32 inputs, the paper's models: resnet110, wrn28_10,
densenet_bc100, vgg19, alexnet); ``--amp`` runs the training step and the eval forward under
bfloat16 autocast, as the classifier trainer does on CUDA.
Results are medians over rounds; the spread (min-max ratio over rounds) is printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

import stablerank as sr
import stablerank.srn as srn_module
from stablerank.models.classifiers import CLASSIFIERS, build_classifier

VARIANTS = ("none", "sn", "srn", "srn-composite", "srn-exact")
ACTIVITY_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
_VIEW_OPS = {
    "aten::view", "aten::reshape", "aten::t", "aten::expand", "aten::as_strided",
    "aten::unsqueeze", "aten::_reshape_alias", "aten::detach", "aten::alias", "aten::transpose",
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::movedim",
    "aten::_unsafe_view", "aten::select", "aten::slice", "aten::result_type", "aten::permute",
}  # fmt: skip
RANK_RATIO = 0.3
BATCH = 128


def build(model_name: str, variant: str, base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    if variant == "sn":
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                spectral_norm(m)
    elif variant.startswith("srn"):
        sr.apply_stable_rank_norm(model, RANK_RATIO, exact=variant == "srn-exact", head="srn")
    return model


def forcing_composite(fn):
    """Run ``fn`` with SRN's composite formula (the torch.compile / torch.func path) forced in
    eager mode, to compare it with the eager path (Note [srn normalization paths])."""

    def run(*args):
        chosen = srn_module._needs_composite
        srn_module._needs_composite = lambda: True
        try:
            fn(*args)
        finally:
            srn_module._needs_composite = chosen

    return run


def count_kernels(layer: nn.Module, device: torch.device) -> int:
    """Kernels of one training step of ``layer.weight`` (power iteration, normalization,
    backward), minus those of the same step on a plain weight. On CUDA: the device kernels
    (and memsets/copies) the profiler records; on the CPU: leaf aten ops (no aten child, views
    excluded), each one kernel."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"

    def ops(module: nn.Module) -> int:
        g = torch.randn_like(module.weight)

        def step() -> None:
            (module.weight * g).sum().backward()

        step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            step()
            if cuda:
                torch.cuda.synchronize()
        if cuda:
            return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
        return sum(
            e.name.startswith("aten::")
            and e.name not in _VIEW_OPS
            and not any(c.name.startswith("aten::") for c in e.cpu_children)
            for e in prof.events()
        )

    return ops(layer) - ops(nn.Linear(1, 1).to(device))


def kernels_table(device: torch.device) -> None:
    """Kernels per layer per training step: torch SN against SRN (c = 0.3 and c = 1)."""
    print("| layer (64 -> 32) | kernels per training step |\n|---|---|")
    rows = {
        "torch spectral_norm": lambda: spectral_norm(nn.Linear(64, 32).to(device)),
        "srn, rank_ratio 0.3": lambda: sr.stable_rank_norm(
            nn.Linear(64, 32).to(device), rank_ratio=0.3
        ),
        "srn, rank_ratio 1 (SN)": lambda: sr.stable_rank_norm(
            nn.Linear(64, 32).to(device), rank_ratio=1.0
        ),
    }
    for name, make in rows.items():
        print(f"| {name} | {count_kernels(make(), device)} |")
    print()


def activity_table() -> None:
    """Fraction of normalized layers whose cap binds at initialization, per rank ratio c."""
    from stablerank.linalg import stable_rank, target_srank, weight_to_matrix
    from stablerank.models.gan import build_discriminator

    cases = {
        name: (lambda name=name: build_classifier(
            name, num_classes=10, in_channels=3, image_size=32), "none")
        for name in ("mlp", "small_cnn", "resnet20", "resnet110", "alexnet", "vgg19",
                     "densenet_bc100", "wrn28_10")
    }  # fmt: skip
    for arch in ("cnn", "resnet"):
        cases[f"gan D {arch}"] = (
            lambda arch=arch: build_discriminator(arch, image_size=32, channels=3, ndf=128),
            "srn",
        )
    print("| model | layers | " + " | ".join(f"c={c}" for c in ACTIVITY_RATIOS) + " |")
    print("|---|---|" + "---|" * len(ACTIVITY_RATIOS))
    for name, (make, head) in cases.items():
        torch.manual_seed(0)
        model = make()
        heads = set(sr.head_layers(model)) if head == "none" else set()
        sranks = []
        for layer_name, layer in sr.eligible_layers(model):
            if layer_name in heads:
                continue
            dim = srn_module._default_dim(layer)
            shape = tuple(weight_to_matrix(layer.weight.detach(), dim).shape)
            sranks.append((stable_rank(layer.weight, dim).item(), shape))
        fractions = [
            sum(s > target_srank(c, shape) for s, shape in sranks) / len(sranks)
            for c in ACTIVITY_RATIOS
        ]
        print(f"| {name} | {len(sranks)} | " + " | ".join(f"{f:.2f}" for f in fractions) + " |")
    print()


def normalized_weights(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]


def time_it(fn, steps: int, device: torch.device) -> float:
    fn()  # not timed: the first call after switching variants warms caches
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()  # GPU work is asynchronous: time from an idle device to an idle device
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet20"],
                        choices=sorted(CLASSIFIERS), help="classifiers to time (default: "
                        "small_cnn resnet20)")  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--work-only", action="store_true", help="time only the normalization work (fast)"
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="time only the eval forward under no_grad"
    )
    parser.add_argument("--kernels", action="store_true", help="count kernels per layer and step")
    parser.add_argument(
        "--activity", action="store_true", help="fraction of binding caps at init per c"
    )
    parser.add_argument(
        "--cifar", action="store_true", help="3x32x32 inputs (default: 1x28x28, Fashion-MNIST)"
    )
    parser.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast in the train and eval steps"
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
        help=f"variants to time (default: all of {', '.join(VARIANTS)}); none and sn, the ratios' "
        "references, are always timed",
    )  # fmt: skip
    args = parser.parse_args()
    for name in ("rounds", "steps"):  # a median of nothing would print NaN tables
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.work_only and args.eval_only:
        parser.error("--work-only and --eval-only time different things: pass one")
    if (args.work_only or args.eval_only) and args.variants == ["srn-exact"]:
        parser.error("srn-exact is timed in training steps only, not with --work-only/--eval-only")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.kernels or args.activity:
        if args.kernels:
            kernels_table(device)
        if args.activity:
            activity_table()
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, batch {BATCH}, "
        f"rank_ratio {RANK_RATIO}, {args.rounds} rounds x {args.steps} steps (medians)"
        f"{', bf16 autocast' if args.amp else ''}{', 3x32x32 inputs' if args.cifar else ''}\n"
    )
    channels, size = (3, 32) if args.cifar else (1, 28)
    x = torch.randn(BATCH, channels, size, size, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    # The reference variants of the ratios are always timed.
    variants = [v for v in VARIANTS if v in args.variants or v == "none"]
    if "sn" not in variants and not args.eval_only:
        variants.insert(1, "sn")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    for model_name in args.models:
        base = build_classifier(
            model_name, num_classes=10, in_channels=channels, image_size=size
        ).to(device)
        models = {v: build(model_name, v, base) for v in variants}
        opts = {
            v: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for v, m in models.items()
        }

        def train_step(v: str, models=models, opts=opts) -> None:
            m, opt = models[v], opts[v]
            m.train()
            with autocast:
                loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def eval_step(v: str, models=models) -> None:
            m = models[v]
            if m.training:  # only in the untimed warm-up call
                m.eval()
            with torch.no_grad(), autocast:
                m(x)

        def norm_work(v: str, models=models, backward: bool = False) -> None:
            weights = []
            for layer in normalized_weights(models[v]):
                layer.train()
                weights.append(layer.weight)  # one power iteration + normalization, recorded
            if backward:
                sum(w.square().sum() for w in weights).backward()

        kinds = ("norm", "norm+bwd") if args.work_only else ("train", "eval", "norm", "norm+bwd")
        if args.eval_only:
            kinds = ("eval",)
        results: dict[str, dict[str, list[float]]] = {k: {v: [] for v in variants} for k in kinds}
        timed = {
            "train": (lambda v: train_step(v), args.steps, "none"),
            "eval": (lambda v: eval_step(v), args.steps * 3, "none"),
            "norm": (lambda v: norm_work(v), args.steps * 20, "sn"),
            "norm+bwd": (lambda v: norm_work(v, backward=True), args.steps * 20, "sn"),
        }
        timed_variants = [
            v for v in variants if not ((args.work_only or args.eval_only) and v == "srn-exact")
        ]
        for _ in range(args.rounds):
            for v in timed_variants:
                for kind in kinds:
                    fn, steps, ref = timed[kind]
                    if v == "srn-composite":
                        fn = forcing_composite(fn)
                    if not (v == "none" and ref == "sn"):
                        results[kind][v].append(time_it(lambda v=v, fn=fn: fn(v), steps, device))
        print(
            f"## {model_name} ({sum(p.numel() for p in base.parameters()) / 1e3:.0f}k params, "
            f"{len(normalized_weights(models[variants[-1]]))} normalized weights)"
        )
        header = ["variant"]
        for kind in kinds:
            header += [f"{kind} (ms)", f"{kind} ratio to {timed[kind][2]}"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for v in timed_variants:
            if not any(results[kind][v] for kind in kinds):
                continue  # none with --work-only: a model without normalization has no such work
            row = [v]
            for kind in kinds:
                ref = timed[kind][2]
                if not results[kind][v]:
                    row += ["-", "-"]
                    continue
                ratios = [a / b for a, b in zip(results[kind][v], results[kind][ref], strict=True)]
                row.append(f"{1e3 * statistics.median(results[kind][v]):.2f}")
                row.append(f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
