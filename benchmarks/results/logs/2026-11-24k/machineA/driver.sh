#!/bin/bash
# stop-24 driver A (one H100), started detached (setsid) by call 1 beside runs/gpu_tests.sh (../gpu_tests.sh);
# later calls only wait and collect (no carry).
#   1. WikiText-2 medium baseline alone (stop 23 learned it needs a machine of its own).
#   2. vocab.py quantization 5x / 10x on it, the runs vocab_wikitext2_medium_rates.json lacks (the 12 others adopted).
total=$1; T0=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 benchmarks/baselines.py --data .data --runs wikitext-2:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_wikitext2_medium.json --time-limit $(left) >> runs/logs/baseline_wt2.log 2>&1
stamp "baseline wikitext-2 medium exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/wikitext-2-medium --corpus wikitext-2 --preset medium --data .data
  --device cuda --num-blocks 10 --rank-rule sqrt_frequency --refine-iters 3 --finetune-epochs 6 --finetune-lr 0.01
  --methods prune,quantize,groupreduce_q,groupreduce,svd --rates 5,10,20 --gq-rates 26,52 --jobs 7 --work runs/v-wt2
  --results runs/results/vocab_wikitext2_medium_rates.json"
$V --reuse benchmarks/results/vocab_wikitext2_medium_rates.json --time-limit $(left) > runs/logs/v_wt2.log 2>&1
stamp "vocab wikitext-2 exit $?"
stamp "all done"
touch runs/DRIVER_DONE
