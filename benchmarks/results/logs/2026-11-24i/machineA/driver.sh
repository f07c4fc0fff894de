#!/bin/bash
# stop-22 driver A (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. PTB large baseline alone.
#   2. vocab.py on it: GroupReduce, pruning 5x / 10x / 20x and SVD 5x / 20x first (8 jobs: one wave), then
#      quantization and GroupReduce+q8 52x if the finished runs' median says they can end in time; the recipe of
#      vocab_ptb_large_rates.json (10 blocks, rank ~ sqrt(frequency), 10 epochs, eager, precision auto, first rate
#      0.1, SVD and GroupReduce+q 0.01), whose 6.6x / 26x / SVD 10x runs are adopted with --reuse.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 benchmarks/baselines.py --data .data --runs ptb:large --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_large.json --time-limit $(left) >> runs/logs/baseline_large.log 2>&1
stamp "baseline large exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/ptb-large --corpus ptb --preset large --data .data --device cuda
  --num-blocks 10 --rank-rule sqrt_frequency --refine-iters 3 --finetune-epochs 10 --finetune-lr 0.1
  --finetune-lr-for svd=0.01 --finetune-lr-for groupreduce_q=0.01 --methods groupreduce,prune,svd,quantize,groupreduce_q
  --rates 5,6.6,10,20 --gq-rates 26,52 --jobs 8 --work runs/v-large --results runs/results/vocab_ptb_large_rates.json"
$V --reuse benchmarks/results/vocab_ptb_large_rates.json --time-limit $(left) > runs/logs/v_large.log 2>&1
stamp "vocab large exit $?"
stamp "all done"
touch runs/DRIVER_DONE
