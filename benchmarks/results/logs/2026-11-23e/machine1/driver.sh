#!/bin/bash
# session-12 driver, machine 1. Big baselines alone first (stop 11's lesson), then the runs that need them.
#   1. PTB large baseline alone (CUDA graph, ~7.6 min).
#   2. vocab.py on PTB large at 6.6x, first rate 0.1 (0.01 ran in stop 10): GroupReduce, pruning, SVD, 3 jobs.
#      Beside it, the PTB medium baseline (~3.4 min alone), then doped KP retraining at 25x, 20 epochs, lr 1,
#      with --anneal-end 0.1 and 0.02 (0.25/0.5/0.8 ran before).
# Resumable: rerun with the same argument (seconds for this call) until everything is done.
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
vocab_large() {
  [ -f runs/done_vocab_large ] && return
  python3 benchmarks/vocab.py --baseline runs/baselines/ptb-large --data .data --device cuda --precision fp32 \
    --finetune-epochs 10 --finetune-lr 0.1 --num-blocks 10 --rank-rule sqrt_frequency \
    --methods groupreduce,prune,svd --rates 6.6 --jobs 3 \
    --work runs/vocab_ptb_large --results runs/results/vocab_ptb_large_s10_ft10_lr0.1.json --time-limit $(left) >> runs/logs/vocab_large.log 2>&1 \
    && touch runs/done_vocab_large
  echo "vocab large exit $?"
}
doped() {  # anneal_end
  [ -f runs/done_doped_$1 ] && return
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods doped_kp --epochs 20 --lr 1 --anneal-end $1 --jobs 1 --no-cpu-latency \
    --out runs/results/recurrent_medium_e20_lr1_anneal$1.json --work runs/rec-anneal$1 --time-limit $(left) >> runs/logs/rec_anneal$1.log 2>&1 \
    && touch runs/done_doped_$1
  echo "doped $1 exit $?"
}
chainM() { base ptb medium || return; doped 0.1 & doped 0.02 & wait; }
if base ptb large; then
  vocab_large & chainM &
  while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  if [ -n "$(jobs -r)" ]; then  # out of time: SIGINT lets every script save and say where it stopped
    pkill -INT -f "benchmarks/(baselines|vocab|recurrent).py"; sleep 25; pkill -KILL -f "benchmarks/(baselines|vocab|recurrent).py" ; fi
  wait
fi
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
for f in runs/logs/*.log; do echo "--- $f"; tail -4 $f; done
grep -h "epoch" runs/rec-anneal*/runs/*/log.txt 2>/dev/null | tail -4
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null); cd ..
