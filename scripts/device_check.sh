#!/usr/bin/env bash
# One prepared pass on a CUDA machine: the `standard` reproduction sweep on the one GPU (local
# executor, several workers sharing it), then the SRN-vs-SN benchmark (and the GPU tests with
# RUN_TESTS=1).
# Needs no install beyond the machine's torch, numpy, scipy, matplotlib, pyyaml, tqdm and
# torchmetrics: runs from the source tree.
#
# Usage: scripts/device_check.sh FASHION_MNIST_DIR OUT_DIR [SWEEP_SECONDS] [WORKERS]
# A CPU smoke test of the script itself: DEVICE=cpu SWEEP=tiny scripts/device_check.sh DIR OUT 120 2
# The sweep's run folders (without checkpoints), report.md, claims.json and figures travel back
# in OUT_DIR/reproduce.tar.gz; rerunning the same sweep command resumes what did not finish.
set -u
data=$1
out=$2
sweep_s=${3:-420}
workers=${4:-12}
device=${DEVICE:-cuda}
sweep=${SWEEP:-standard}
start=$(date +%s)
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
py=${PY:-python3}

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
        | tee -a "$out/gpu.txt"
fi

repro=$PWD/.devrun/reproduce-$sweep
timeout --signal=INT "$sweep_s" $py -m stablerank reproduce --sweep "$sweep" --device "$device" \
    --workers "$workers" --threads 1 --data-dir "$data" --out-dir "$repro" --progress false \
    >"$out/reproduce.log" 2>&1
echo "reproduce exit $?" >>"$out/reproduce.log"
# The report of whatever finished (the command above writes it only when it ends in time).
$py -m stablerank reproduce --sweep "$sweep" --out-dir "$repro" --report-only \
    >>"$out/reproduce.log" 2>&1
tar -czf "$out/reproduce.tar.gz" --exclude='*.pt' --exclude='submitit' -C "$(dirname "$repro")" \
    "$(basename "$repro")"
tail -5 "$out/reproduce.log"
# After the sweep, on the idle GPU: the GPU tests and the SRN-vs-SN training-step benchmark.
if [ "$device" = cuda ]; then
    timeout "${BENCH_SECONDS:-90}" $py benchmarks/bench_srn.py --device cuda --rounds 3 \
        --models small_cnn resnet20 >"$out/bench_cuda.log" 2>&1
    [ -n "${RUN_TESTS:-}" ] && timeout 120 $py -m pytest tests/test_cuda.py -q -p no:cacheprovider \
        >"$out/pytest_cuda.log" 2>&1
fi
echo "device_check done after $(($(date +%s) - start)) s"
