#!/bin/bash
# stop-18 driver 2 (one H100), started detached (setsid) by call 1; later calls only wait and collect.
# Machine 1 showed that baselines trained beside other runs take 2-3x longer, so here everything runs alone:
#   1. PTB large baseline.
#   2. TT (fast order) at 25x as in stop 17 (10 epochs lr 0.2 -> 0.005), no speeds (stop 17 has them).
#   3. benchmarks/eval_windows.py on it and on the dense model (stop 17's erratic validation), fp32, then TF32.
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
    --device cuda --precision fp32 --cuda-graph --ratios 25 --epochs 10 --methods "tt:$r" --no-speed \
    --jobs 1 --out runs/results/recurrent_large_e10_tt_fast.json --work runs/rec-ttl \
    --time-limit $(left) >> runs/logs/rec_ttl.log 2>&1
  stamp "tt large exit $?"
  models=$(ls -d runs/rec-ttl/runs/*/model 2>/dev/null)
  timeout $(left) python3 benchmarks/eval_windows.py $models runs/baselines/ptb-large --data .data --corpus ptb \
    --batches 10,20,1 --reset-every 0,1,20 --out runs/results/eval_windows_large_tt.json >> runs/logs/eval_windows.log 2>&1
  stamp "eval windows exit $?"
  timeout $(left) python3 benchmarks/eval_windows.py $models --data .data --corpus ptb --tf32 --splits valid \
    --batches 10,20 --reset-every 0 --out runs/results/eval_windows_large_tt_tf32.json >> runs/logs/eval_windows.log 2>&1
  stamp "eval windows tf32 exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
