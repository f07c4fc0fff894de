#!/bin/bash
# stop-19 driver 1 (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. runs/gr_profile.py alone: GroupReduce's GPU time kernel by kernel and candidate softmax/lookup paths.
#   2. PTB medium baseline alone.
#   3. LMF, HMD, KP at 25x on PTB medium with 20 retraining epochs at their best rate (lr 0.2 -> 0.005): doped KP's
#      best (+7.64%) had 20 epochs, theirs only 10, so "better than every other method" was not yet a fair match.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 300 python3 runs/gr_profile.py > runs/logs/gr_profile.log 2>&1
stamp "gr profile exit $?"
python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
stamp "baseline medium exit $?"
if [ -f runs/baselines/ptb-medium/manifest.json ]; then
  r="lr=0.2;lr_end=0.005"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --epochs 20 --methods "lmf:$r,hmd:$r,kp:$r" --no-speed \
    --jobs 3 --out runs/results/recurrent_medium_e20_lr0.2.json --work runs/rec-e20 \
    --time-limit $(left) >> runs/logs/rec_e20.log 2>&1
  stamp "medium e20 lr0.2 exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
