#!/bin/bash
# session-13 driver, machine 1: WikiText-2 medium baseline alone (CUDA graph, fp32, ~10.2 min: two calls), then
# vocab.py at 6.6x (GroupReduce, SVD, pruning) and 26x (GroupReduce + 8-bit) with 6 retraining epochs at first
# rate 0.01 (stop 9 ran 2 epochs at 0.1, whose first epoch GroupReduce rejected), 4 jobs side by side, each epoch
# replayed from a CUDA graph where the model allows it (--cuda-graph, new this stop).
# Run it from a copy outside benchmarks/. Resumable: rerun with the same argument (seconds for this call).
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p runs/results runs/logs
if [ ! -f runs/done_gputest ]; then  # graph-replayed training of every method equals eager (~1 min), before the baseline
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_graph_training.py > runs/logs/gpu_tests.log 2>&1
  touch runs/done_gputest; tail -3 runs/logs/gpu_tests.log
fi
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
if [ ! -f runs/baselines/wikitext-2-medium/manifest.json ]; then
  python3 benchmarks/baselines.py --data .data --runs wikitext-2:medium --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_wikitext2_medium.json --time-limit $(left) >> runs/logs/baseline_wt2.log 2>&1
fi
if [ -f runs/baselines/wikitext-2-medium/manifest.json ] && [ ! -f runs/done_vocab ]; then
  python3 benchmarks/vocab.py --baseline runs/baselines/wikitext-2-medium --data .data --device cuda --precision fp32 \
    --finetune-epochs 6 --finetune-lr 0.01 --num-blocks 10 --rank-rule sqrt_frequency \
    --methods groupreduce,groupreduce_q,svd,prune --rates 6.6 --gq-rates 26 --jobs 4 \
    --work runs/vocab_wt2 --results runs/results/vocab_wikitext2_medium_ft6.json --time-limit $(left) >> runs/logs/vocab_wt2.log 2>&1 \
    && touch runs/done_vocab &
  while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  if [ -n "$(jobs -r)" ]; then pkill -INT -f "benchmarks/(baselines|vocab|recurrent).py"; sleep 25; pkill -KILL -f "benchmarks/(baselines|vocab|recurrent).py"; fi
  wait
fi
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
for f in runs/logs/*.log; do echo "--- $f"; grep -v Warning $f | grep -v "torch.lstm" | tail -8; done
grep -h "finetune epoch" runs/vocab_wt2/*/*.log runs/vocab_wt2/*.log 2>/dev/null | tail -8
cd runs && tar czf $OUT/results.tgz results logs $(ls -d baselines/*.log 2>/dev/null); cd ..
