#!/bin/bash
# stop-17 driver 2 (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. GPU tests (TT's new default mode order among the methods checked against the CPU logits).
#   2. PTB medium baseline alone.
#   3. recurrent.py on PTB medium at 25x: TT in its new default mode order ("fast": fewest multiply-adds among the
#      orders storing >= 97% of the ascending order's numbers) against the old ascending order, 10 retraining
#      epochs at lr 0.2 -> 0.005, side by side, then speeds one model at a time.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -rA tests/test_gpu.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $?"; grep -c PASSED runs/logs/gpu_tests.log; grep -E "^(FAILED|ERROR)" runs/logs/gpu_tests.log | head
python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
stamp "baseline medium exit $?"
if [ -f runs/baselines/ptb-medium/manifest.json ]; then
  r="lr=0.2;lr_end=0.005"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --cuda-graph --ratios 25 --epochs 10 --methods "tt:$r,tt:order=ascending;$r" \
    --jobs 2 --cpu-repeats 5 --out runs/results/recurrent_medium_e10_tt_order.json --work runs/rec-tt \
    --time-limit $(left) >> runs/logs/rec_tt.log 2>&1
  stamp "recurrent medium tt exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
