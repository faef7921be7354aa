#!/usr/bin/env bash
# One prepared pass on a CUDA machine: the GPU tests, the CUDA benchmark, and the issue-3/4
# acceptance runs (Fashion-MNIST small CNN, ResNet-20, shattering, quick SN-/SRN-GAN) launched
# side by side on the one GPU. Needs no install: runs from the source tree with the machine's torch.
#
# Usage: scripts/device_check.sh FASHION_MNIST_DIR OUT_DIR [DEADLINE_SECONDS]
# A CPU smoke test of the script itself: DEVICE=cpu SHORT=1 scripts/device_check.sh DIR OUT 300
# Every job logs to OUT_DIR/logs; the logs and the run folders (without checkpoints) are packed
# into OUT_DIR/runs.tar.gz when all jobs end or at the deadline, whichever comes first.
set -u
data=$1
out=$2
deadline=${3:-420}
start=$(date +%s)
mkdir -p "$out/logs"
runs=$(mktemp -d)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
py=python3
device=${DEVICE:-cuda}
short_train=() short_gan=()
if [ -n "${SHORT:-}" ]; then
    short_train=(--epochs 1 --train-subset 256)
    short_gan=(--g-steps 2 --n-final-samples 64 --n-eval-samples 64)
fi

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/logs/gpu.txt"
    $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
        | tee -a "$out/logs/gpu.txt"
fi

# Background jobs: acceptance runs (one process each; the models are small, the GPU is shared).
job() {  # job NAME COMMAND...
    local name=$1
    shift
    (
        t0=$(date +%s)
        "$@" >"$out/logs/$name.log" 2>&1
        echo "exit $? after $(($(date +%s) - t0)) s" >>"$out/logs/$name.log"
    ) &
}
train() { $py -m stablerank train --data-dir "$data" --out-dir "$runs" --progress false \
    --device "$device" "$@" "${short_train[@]}"; }
train_and_analyze() {  # the run folder is the newest under $runs/<preset dir>
    local dir=$1
    shift
    train --run-dir "$runs/$dir" "$@" && $py -m stablerank analyze "$runs/$dir" --device "$device"
}
for norm in none sn srn; do
    job "cnn_$norm" train_and_analyze "cnn_$norm" --preset fmnist-cnn --norm $norm --rank-ratio 0.3
    job "resnet20_$norm" train_and_analyze "resnet20_$norm" --preset fmnist-resnet20 \
        --norm $norm --rank-ratio 0.3
    job "shatter_$norm" train --run-dir "$runs/shatter_$norm" --preset shatter --norm $norm \
        --rank-ratio 0.3
done
for dnorm in sn srn; do
    job "gan_$dnorm" $py -m stablerank gan --preset quick --d-norm $dnorm --data-dir "$data" \
        --out-dir "$runs/gan" --run-name "quick_$dnorm" --device "$device" --progress false "${short_gan[@]}"
done

# Foreground while those run: the GPU tests (correctness only; the GPU is shared meanwhile).
if [ "$device" = cuda ]; then
    $py -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$out/logs/pytest_cuda.log"
fi
while [ -n "$(jobs -rp)" ] && [ $(($(date +%s) - start)) -lt "$deadline" ]; do sleep 5; done
for pid in $(jobs -rp); do pkill -P "$pid"; kill "$pid"; done 2>/dev/null
# Timings on the idle GPU, after the jobs.
if [ "$device" = cuda ]; then
    timeout 90 $py benchmarks/bench_srn.py --device cuda --rounds 5 2>&1 \
        | tee "$out/logs/bench_cuda.log"
fi
$py -c "
import sys; sys.path.insert(0, 'src')
from stablerank.train.analyze import plot_shattering
plot_shattering(['$runs/shatter_none', '$runs/shatter_sn', '$runs/shatter_srn'],
                '$runs/shattering.png')" >"$out/logs/plot.log" 2>&1
# The device tool returns at most 8 files: logs and run folders travel in one archive.
cp -r "$out/logs" "$runs/logs"
tar -czf "$out/runs.tar.gz" --exclude='*.pt' -C "$runs" .
echo "device_check done after $(($(date +%s) - start)) s"
