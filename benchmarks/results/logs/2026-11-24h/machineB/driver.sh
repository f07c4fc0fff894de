#!/bin/bash
# stop-21 driver B (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. WikiText-2 medium baseline alone.
#   2. vocab.py on it: 5x / 10x / 20x for GroupReduce, SVD, pruning, then quantization and GroupReduce+q8 52x, the
#      recipe of vocab_wikitext2_medium_ft6.json (10 blocks, rank ~ sqrt(frequency), 6 epochs from 0.01, eager,
#      precision auto); its 6.6x / 26x runs adopted with --reuse.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 benchmarks/baselines.py --data .data --runs wikitext-2:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_wikitext2_medium.json --time-limit $(left) >> runs/logs/baseline_wt2.log 2>&1
stamp "baseline wikitext-2 medium exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/wikitext-2-medium --corpus wikitext-2 --preset medium --data .data
  --device cuda --num-blocks 10 --rank-rule sqrt_frequency --refine-iters 3 --finetune-epochs 6 --finetune-lr 0.01
  --methods groupreduce,svd,prune,quantize,groupreduce_q --gq-rates 26,52 --jobs 5 --work runs/v-wt2
  --results runs/results/vocab_wikitext2_medium_rates.json"
$V --rates 5,6.6,10,20 --reuse benchmarks/results/vocab_wikitext2_medium_ft6.json --time-limit $(( $(left) - 360 )) > runs/logs/v_wt2.log 2>&1
rc=$?; stamp "vocab wikitext-2 exit $rc"
if [ $rc = 2 ]; then  # the fresh baseline differs from the reused file's: run the new rates without adopting
  $V --rates 5,10,20 --time-limit $(( $(left) - 360 )) >> runs/logs/v_wt2.log 2>&1
  stamp "vocab wikitext-2 (no reuse) exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
