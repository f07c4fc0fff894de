#!/bin/bash
# session-12 driver, machine 2: PTB medium baseline alone (machine 1's ran beside vocab.py and the machine went back
# before the doped runs could start), then doped KP retraining at 25x, 20 epochs, lr 1, --anneal-end 0.1 and 0.02
# side by side. Run it from a copy outside benchmarks/ (the final pkill matches "benchmarks/").
# Resumable: rerun with the same argument (seconds for this call) until everything is done.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
doped() {  # anneal_end
  [ -f runs/done_doped_$1 ] && return
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods doped_kp --epochs 20 --lr 1 --anneal-end $1 --jobs 1 --no-cpu-latency \
    --out runs/results/recurrent_medium_e20_lr1_anneal$1.json --work runs/rec-anneal$1 --time-limit $(left) >> runs/logs/rec_anneal$1.log 2>&1 \
    && touch runs/done_doped_$1
  echo "doped $1 exit $?"
}
if [ ! -f runs/baselines/ptb-medium/manifest.json ]; then
  python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
fi
if [ -f runs/baselines/ptb-medium/manifest.json ]; then
  doped 0.1 & doped 0.02 &
  while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  if [ -n "$(jobs -r)" ]; then pkill -INT -f "benchmarks/recurrent.py"; sleep 25; pkill -KILL -f "benchmarks/recurrent.py"; fi
  wait
fi
for f in runs/logs/*.log; do echo "--- $f"; tail -6 $f; done
grep -h "epoch" runs/rec-anneal*/runs/*/log.txt 2>/dev/null | tail -4
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null); cd ..
