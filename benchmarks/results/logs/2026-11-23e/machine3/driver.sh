#!/bin/bash
# session-12 driver, machine 3: PTB medium baseline alone, then doped KP and pruning at 25x with 30 retraining
# epochs (lr 1 -> 0.02), both reaching their final density at 25% of training (doped KP's best setting at 20
# epochs), side by side: does longer retraining widen doped KP's lead? Run it from a copy outside benchmarks/.
# Resumable: rerun with the same argument (seconds for this call) until everything is done.
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
    --device cuda --precision fp32 --ratios 25 --methods doped_kp,prune --epochs 30 --lr 1 --anneal-end 0.25 --jobs 2 \
    --no-cpu-latency --out runs/results/recurrent_medium_e30_lr1_anneal0.25.json --work runs/rec-e30 \
    --time-limit $(left) >> runs/logs/rec_e30.log 2>&1 &
  while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  if [ -n "$(jobs -r)" ]; then pkill -INT -f "benchmarks/recurrent.py"; sleep 25; pkill -KILL -f "benchmarks/recurrent.py"; fi
  wait
fi
for f in runs/logs/*.log; do echo "--- $f"; tail -6 $f; done
grep -h "epoch" runs/rec-e30/runs/*/log.txt 2>/dev/null | tail -4
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null); cd ..
