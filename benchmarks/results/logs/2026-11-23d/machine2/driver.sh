#!/bin/bash
# session-11 driver, machine 2: PTB medium baseline alone (CUDA graph), then recurrent.py --modes scratch at 25x:
# doped KP, plain KP and LMF trained from a fresh initialisation with the full 39-epoch medium recipe, side by side.
# Rerun with the same SECONDS until the scratch runs are done.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
if [ ! -f runs/baselines/ptb-medium/manifest.json ]; then
  python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
fi
if [ -f runs/baselines/ptb-medium/manifest.json ]; then
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --modes scratch --methods doped_kp,kp,lmf --jobs 3 --no-cpu-latency \
    --out runs/results/recurrent_medium_scratch.json --work runs/rec-scratch --time-limit $(left) >> runs/logs/rec_scratch.log 2>&1 &
  while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  if [ -n "$(jobs -r)" ]; then pkill -INT -f "benchmarks/recurrent.py"; sleep 25; pkill -KILL -f "benchmarks/"; fi
  wait
fi
for f in runs/logs/*.log; do echo "--- $f"; tail -6 $f; done
grep -h "epoch" runs/rec-scratch/runs/*/log.txt 2>/dev/null | tail -6
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null); cd ..
