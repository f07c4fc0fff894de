#!/bin/bash
# session-11 driver: three chains side by side, each resumable across calls (rerun with the same SECONDS):
#   A: PTB large baseline, then vocab.py at first rate 0.1 (GroupReduce, pruning, SVD at 6.6x; 0.01 ran last stop)
#   B: PTB medium baseline, then recurrent.py --modes scratch (doped KP and plain KP at 25x, the full 39-epoch recipe)
#   C: PTB small baseline, then vocab.py at 5/10/20x, first rates 0.1 and 0.01 (each method judged at its better one)
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
base() {  # corpus preset
  [ -f runs/baselines/$1-$2/manifest.json ] && return 0
  python3 benchmarks/baselines.py --data .data --runs $1:$2 --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_$1_$2.json --time-limit $(left) >> runs/logs/baseline_$2.log 2>&1
  [ -f runs/baselines/$1-$2/manifest.json ]
}
chainA() {
  base ptb large || return
  python3 benchmarks/vocab.py --baseline runs/baselines/ptb-large --data .data --device cuda --precision fp32 \
    --finetune-epochs 10 --finetune-lr 0.1 --num-blocks 10 --rank-rule sqrt_frequency \
    --methods groupreduce,prune,svd --rates 6.6 --jobs 3 \
    --work runs/vocab_ptb_large --results runs/results/vocab_ptb_large_s10_ft10_lr0.1.json --time-limit $(left) >> runs/logs/vocab_large.log 2>&1
  echo "A vocab exit $?"
}
chainB() {
  base ptb medium || return
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --modes scratch --methods doped_kp,kp --jobs 2 --no-cpu-latency \
    --out runs/results/recurrent_medium_scratch.json --work runs/rec-scratch --time-limit $(left) >> runs/logs/rec_scratch.log 2>&1
  echo "B recurrent exit $?"
}
chainC() {
  base ptb small || return
  python3 benchmarks/vocab.py --baseline runs/baselines/ptb-small --data .data --device cuda --precision fp32 \
    --finetune-epochs 4 --finetune-lr 0.1,0.01 --num-blocks 10 --rank-rule sqrt_frequency \
    --methods groupreduce,groupreduce_q,svd,prune,quantize --rates 5,10,20 --gq-rates 26,52 --jobs 6 \
    --work runs/vocab_ptb_small --results runs/results/vocab_ptb_small_s10.json --time-limit $(left) >> runs/logs/vocab_small.log 2>&1
  echo "C vocab exit $?"
}
chainA & chainB & chainC &
while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
if [ -n "$(jobs -r)" ]; then  # out of time: SIGINT lets every script save and say where it stopped
  pkill -INT -f "benchmarks/(baselines|vocab|recurrent).py"; sleep 20; pkill -KILL -f "benchmarks/" ; fi
wait
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
for f in runs/logs/*.log; do echo "--- $f"; tail -4 $f; done
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null); cd ..
