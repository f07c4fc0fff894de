#!/bin/bash
# stop-17 driver (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. All GPU tests (tests/test_speed.py's graph-replay checks too, not run in stop 16) beside the PTB small baseline.
#   2. PTB large baseline (the small one may still be finishing beside it).
#   3. recurrent.py on PTB large at 25x, 10 retraining epochs, each method at the rate it preferred at 6 epochs:
#      doped KP at lr 1 -> 0.02 with CMR 0.3 and without, LMF/HMD/KP/pruning at lr 0.2 -> 0.005 (TT left out:
#      +104% at its best). Side by side: vocab.py on PTB small, quantization and GroupReduce+q with the balanced
#      group layout (stop 16), 10 retraining epochs from 0.1 under a CUDA graph, same settings as
#      vocab_ptb_small_ft10_graph.json, dense retrained the same way as the reference.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
base() {  # corpus preset
  [ -f runs/baselines/$1-$2/manifest.json ] && return 0
  python3 benchmarks/baselines.py --data .data --runs $1:$2 --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_$1_$2.json --time-limit $(left) >> runs/logs/baseline_$2.log 2>&1
  stamp "baseline $2 exit $?"
  [ -f runs/baselines/$1-$2/manifest.json ]
}
(timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider -rA tests/ > runs/logs/gpu_tests.log 2>&1
 stamp "gpu tests exit $?"; grep -E "passed|failed" runs/logs/gpu_tests.log | tail -2) &
base ptb small &
base ptb large
wait
vocab_small() {
  python3 benchmarks/vocab.py --baseline runs/baselines/ptb-small --data .data --device cuda --precision fp32 \
    --cuda-graph --finetune-epochs 10 --finetune-lr 0.1 --num-blocks 10 --rank-rule sqrt_frequency \
    --methods dense_retrained,quantize,groupreduce_q --rates 5,6.6,10 --gq-rates 26,52 --jobs 3 \
    --work runs/vocab_balanced --results runs/results/vocab_ptb_small_ft10_balanced.json --time-limit $(left) \
    >> runs/logs/vocab_balanced.log 2>&1
  stamp "vocab small balanced exit $?"
}
rec_large() {
  r=";lr_end=0.005"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-large --preset large --corpus ptb --data .data \
    --device cuda --precision fp32 --cuda-graph --ratios 25 --epochs 10 --lr 1 --lr-end 0.02 \
    --methods "doped_kp,doped_kp:cmr=0,lmf:lr=0.2$r,hmd:lr=0.2$r,kp:lr=0.2$r,prune:lr=0.2$r" \
    --jobs 6 --cpu-repeats 3 --out runs/results/recurrent_large_e10_best.json \
    --work runs/rec-large10 --time-limit $(left) >> runs/logs/rec_large10.log 2>&1
  stamp "recurrent large e10 exit $?"
}
[ -f runs/baselines/ptb-small/manifest.json ] && vocab_small &
[ -f runs/baselines/ptb-large/manifest.json ] && rec_large
wait
stamp "all done"
touch runs/DRIVER_DONE
