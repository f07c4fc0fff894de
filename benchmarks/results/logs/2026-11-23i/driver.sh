#!/bin/bash
# stop-16 driver (one H100), started detached by call 1; later calls only wait and collect.
#   1. GPU tests alone (test_gpu.py incl. the pruned embedding's new "rebuild" lookup default; graph training).
#   2. PTB large baseline ALONE (Zaremba large, CUDA graph, fp32/TF32).
#   3. recurrent.py on PTB large: every LSTM method at 25x, 6 retraining epochs (the recipe of recurrent.json's
#      medium Grachev table), 6 jobs side by side, then speeds one model at a time (GPU tok/s, CPU ms/token b=1).
#   4. If time is left: PTB medium baseline alone, then the CMR ablation (doped KP 25x, CMR 0.3 vs 0).
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_graph_training.py \
  > runs/logs/gpu_tests.log 2>&1; stamp "gpu tests exit $?"; tail -3 runs/logs/gpu_tests.log
base() {  # corpus preset
  [ -f runs/baselines/$1-$2/manifest.json ] && return 0
  python3 benchmarks/baselines.py --data .data --runs $1:$2 --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_$1_$2.json --time-limit $(left) >> runs/logs/baseline_$2.log 2>&1
  stamp "baseline $2 exit $?"
  [ -f runs/baselines/$1-$2/manifest.json ]
}
if base ptb large; then
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-large --preset large --corpus ptb --data .data \
    --device cuda --precision fp32 --cuda-graph --ratios 25 --methods doped_kp,kp,prune,hmd,lmf,tt --epochs 6 \
    --jobs 6 --cpu-repeats 5 --out runs/results/recurrent_large.json --work runs/rec-large \
    --time-limit $(left) >> runs/logs/rec_large.log 2>&1
  stamp "recurrent large exit $?"
fi
if [ $(left) -gt 700 ] && base ptb medium; then
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods doped_kp,doped_kp:cmr=0 --epochs 20 --lr 1 --anneal-end 0.25 \
    --jobs 2 --no-cpu-latency --out runs/results/recurrent_medium_e20_lr1_anneal0.25_cmr.json --work runs/rec-cmr \
    --time-limit $(left) >> runs/logs/rec_cmr.log 2>&1
  stamp "cmr exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
