#!/bin/bash
# stop-22 driver B (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. GPU tests (after stop 21's review commit f4215c7, which touched compress --distill and the checkpoint).
#   2. WikiText-2 medium baseline alone.
#   3. vocab.py on it: the runs vocab_wikitext2_medium_rates.json lacks (pruning 10x / 20x, quantization,
#      GroupReduce+q8 26x / 52x), that file's recipe (10 blocks, rank ~ sqrt(frequency), 6 epochs from 0.01, eager,
#      precision auto), its finished runs adopted with --reuse; 7 jobs, one wave.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_graph_training.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $?"
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
