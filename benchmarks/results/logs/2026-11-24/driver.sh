#!/bin/bash
# stop-18 driver (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   A. PTB medium baseline, then doped KP at 25x with the KP factors given a share of the budget (kp_share) against
#      the stop-16 best recipe (one KP term), 20 epochs lr 1 -> 0.02, anneal over the first 25%, 6 jobs side by side,
#      no speeds yet.
#   B. At the same time: PTB large baseline, then TT (fast order) at 25x as in stop 17 (10 epochs lr 0.2 -> 0.005),
#      then benchmarks/eval_windows.py on it and on the dense model (the erratic validation of stop 17).
#   C. When both are done: speeds of A's models, one at a time, alone on the machine.
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
M="doped_kp:cmr=0,doped_kp:cmr=0;kp_share=0.3,doped_kp:cmr=0;kp_share=0.6,doped_kp:kp_share=0.6,doped_kp:cmr=0;kp_share=0.8,doped_kp:cmr=0;kp_share=0.6;lr=0.5;lr_end=0.01"
dkp() {  # extra args
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods "$M" --epochs 20 --lr 1 --anneal-end 0.25 \
    --jobs 6 --cpu-repeats 3 --out runs/results/recurrent_medium_e20_kp_share.json --work runs/rec-kps \
    --time-limit $(left) "$@" >> runs/logs/rec_kps.log 2>&1
}
(
  if base ptb medium; then dkp --no-speed; stamp "kp_share runs exit $?"; fi
) &
(
  if base ptb large; then
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
      --batches 10 --reset-every 0 --out runs/results/eval_windows_large_tt_tf32.json >> runs/logs/eval_windows.log 2>&1
    stamp "eval windows tf32 exit $?"
  fi
) &
wait
stamp "A and B done"
if [ -f runs/results/recurrent_medium_e20_kp_share.json ]; then dkp; stamp "kp_share speeds exit $?"; fi
stamp "all done"
touch runs/DRIVER_DONE
