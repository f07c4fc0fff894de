#!/bin/bash
# stop-17 driver 3 (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. PTB large baseline alone.
#   2. recurrent.py on PTB large at 25x: TT in its new default mode order against the ascending order, 10 retraining
#      epochs at lr 0.2 -> 0.005 (TT's better rate at 6 epochs), side by side, then speeds one model at a time.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 benchmarks/baselines.py --data .data --runs ptb:large --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_large.json --time-limit $(left) >> runs/logs/baseline_large.log 2>&1
stamp "baseline large exit $?"
if [ -f runs/baselines/ptb-large/manifest.json ]; then
  r="lr=0.2;lr_end=0.005"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-large --preset large --corpus ptb --data .data \
    --device cuda --precision fp32 --cuda-graph --ratios 25 --epochs 10 --methods "tt:$r,tt:order=ascending;$r" \
    --jobs 2 --cpu-repeats 3 --out runs/results/recurrent_large_e10_tt_order.json --work runs/rec-tt \
    --time-limit $(left) >> runs/logs/rec_tt_large.log 2>&1
  stamp "recurrent large tt exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
