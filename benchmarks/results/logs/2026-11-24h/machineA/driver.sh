#!/bin/bash
# stop-21 driver A (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. GPU tests (after stop 20's second review, 454f971, which touched the graphed step and measure's graph state).
#   2. PTB large baseline alone.
#   3. vocab.py on PTB large: 5x / 10x / 20x for GroupReduce, SVD, pruning (then quantization and GroupReduce+q8 52x),
#      the recipe of vocab_ptb_large_s10_ft10_lr2.json (10 blocks, rank ~ sqrt(frequency), 10 epochs, eager, precision
#      auto), each method at the first rate validation chose there at 6.6x (GroupReduce and pruning 0.1, SVD 0.01,
#      GroupReduce+q 0.01); its 6.6x / 26x runs adopted with --reuse.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_graph_training.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $?"
python3 benchmarks/baselines.py --data .data --runs ptb:large --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_large.json --time-limit $(left) >> runs/logs/baseline_large.log 2>&1
stamp "baseline large exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/ptb-large --corpus ptb --preset large --data .data --device cuda
  --num-blocks 10 --rank-rule sqrt_frequency --refine-iters 3 --finetune-epochs 10 --finetune-lr 0.1
  --finetune-lr-for svd=0.01 --finetune-lr-for groupreduce_q=0.01 --methods groupreduce,svd,prune,quantize,groupreduce_q
  --gq-rates 26,52 --jobs 5 --work runs/v-large --results runs/results/vocab_ptb_large_rates.json"
$V --rates 5,6.6,10,20 --reuse benchmarks/results/vocab_ptb_large_s10_ft10_lr2.json --time-limit $(( $(left) - 480 )) > runs/logs/v_large.log 2>&1
rc=$?; stamp "vocab large exit $rc"
if [ $rc = 2 ]; then  # the fresh baseline differs from the reused file's: run the new rates without adopting
  $V --rates 5,10,20 --time-limit $(( $(left) - 480 )) >> runs/logs/v_large.log 2>&1
  stamp "vocab large (no reuse) exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
