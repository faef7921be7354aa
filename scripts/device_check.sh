#!/usr/bin/env bash
# One prepared pass on a lent CUDA machine, most important first, each stage under its own
# timeout (about 10 minutes at most; STAGES=N runs the first N):
#   1. every GPU test (`pytest -m gpu`): a tiny sweep through each executor placing its runs on
#      the GPU (bitwise-equal results with deterministic kernels), then the SRN layer's CUDA path
#      against the CPU path, no host sync in a training step, autocast, half weights,
#      torch.compile, both trainers with AMP;
#   2. the SRN-vs-SN training-step benchmark at Fashion-MNIST size (small CNN, ResNet-20, fp32);
#   3. the same at CIFAR size under bf16 autocast for the paper's models (none, SN, SRN).
# Runs from the source tree with the machine's torch, numpy, scipy, matplotlib, pyyaml, tqdm,
# scikit-learn and torchmetrics; submitit travels as a wheel in .whl/ when present (see
# docs/testing.md). Logs go to OUT_DIR (at most 8 files come back from the device tool).
#
# Usage: scripts/device_check.sh OUT_DIR
# CPU smoke test of the script (the GPU tests skip): PY=.venv/bin/python DEVICE=cpu \
#   BENCH_SECONDS=20 scripts/device_check.sh /tmp/out
set -u
usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case "$#:${1:-}" in
    1:-h | 1:--help) usage; exit 0 ;;
    1:-*) echo "device_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    1:*) ;;
    *) echo "device_check.sh: expected one argument, OUT_DIR (got $#)" >&2; usage >&2; exit 2 ;;
esac
out=$1
device=${DEVICE:-cuda}
py=${PY:-python3}
bench_s=${BENCH_SECONDS:-180}
start=$(date +%s)
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if [ -d .whl ] && ! $py -c "import submitit" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt"
fi
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

stages=0
stage() {  # stage NAME SECONDS COMMAND...: run one stage, log its exit status and its time
    local name=$1 limit=$2 t0
    shift 2
    stages=$((stages + 1))
    [ "$stages" -gt "${STAGES:-99}" ] && return
    t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $(($(date +%s) - t0)) s" | tee -a "$out/stages.txt"
}
# The sweep test first, in a process of its own: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it
# starts, and the sequential path's runs share the test's process.
stage pytest_sweep_gpu 200 $py -m pytest -m gpu tests/repro/test_pipeline.py -p no:cacheprovider \
    -rs
stage pytest_gpu 120 $py -m pytest -m gpu tests/test_cuda.py -p no:cacheprovider -rs \
    --durations=12
stage bench_fmnist 100 $py benchmarks/bench_srn.py --device "$device" --rounds 3 --steps 5 \
    --models small_cnn resnet20
stage bench_cifar "$bench_s" $py benchmarks/bench_srn.py --device "$device" --rounds 3 --steps 3 \
    --cifar --amp --variants none sn srn \
    --models resnet110 wrn28_10 densenet_bc100 vgg19 alexnet
for f in "$out"/pytest_*.log; do tail -n 3 "$f"; done
echo "device_check done after $(($(date +%s) - start)) s" | tee -a "$out/stages.txt"
