#!/bin/bash
# session-10 driver, machine 2: PTB large baseline (CUDA graph, alone), then vocab.py GroupReduce/SVD/prune at matched rates
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 25 )); }
if [ ! -f runs/baselines/ptb-large/manifest.json ]; then
  python3 benchmarks/baselines.py --data .data --runs ptb:large --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines.json --time-limit $(left) > runs/logs/baseline_large.log 2>&1
  tail -5 runs/logs/baseline_large.log
fi
if [ -f runs/baselines/ptb-large/manifest.json ] && [ $(left) -gt 430 ]; then
  python3 benchmarks/vocab.py --baseline runs/baselines/ptb-large --data .data --device cuda --precision fp32 \
    --finetune-epochs 4 --finetune-lr 0.01 --num-blocks 10 --rank-rule sqrt_frequency \
    --methods groupreduce,groupreduce_q,svd,prune --rates 6.6 --gq-rates 26 --jobs 4 \
    --work runs/vocab_ptb_large --results runs/results/vocab_ptb_large_s10.json --time-limit 60 >> runs/logs/vocab_large.log 2>&1
  echo "vocab exit $?"; tail -20 runs/logs/vocab_large.log
fi
cd runs && tar czf $OUT/results.tgz results logs baselines/*.log; cd ..
