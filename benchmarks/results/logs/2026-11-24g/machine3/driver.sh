#!/bin/bash
# stop-20 driver 3 (one H100): machine 2's recurrent lane ran out of time (its medium baseline trained beside six
# vocabulary jobs: 17.5 min). Here alone: PTB medium baseline, then doped KP, LMF and pruning at 25x, 20 epochs,
# each retrained against the dense model (distill 1) with its best recipe of stop 19.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
stamp "baseline medium exit $?"
python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
  --device cuda --precision fp32 --ratios 25 --epochs 20 --lr 1 --anneal-end 0.25 \
  --methods "doped_kp:cmr=0;distill=1,lmf:lr=0.2;lr_end=0.005;distill=1,prune:distill=1" --no-speed --jobs 3 \
  --out runs/results/recurrent_medium_e20_kd1.json --work runs/rec-kd1 --time-limit $(left) >> runs/logs/rec_kd1.log 2>&1
stamp "rec kd1 exit $?"
stamp "all done"
touch runs/DRIVER_DONE
