#!/bin/bash
# stop-15 driver (one H100). Started detached (setsid) by call 1 so that it runs on across calls; calls 2 and 3
# only wait and collect. Argument: seconds this driver may run.
#   1. speed.py at the PTB-large shape, 6.6x, TF32, GPU alone: GroupReduce's embedding lookup as scatter + GEMM
#      against one weighted embedding_bag (rows groupreduce[bag]), eager and CUDA graph, with breakdown.
#   2. GPU tests (test_gpu.py with the bag lookup, test_gpu_graph_training.py now with the pruning rows in their
#      retraining form) beside the PTB small baseline.
#   3. PTB medium baseline; side by side, vocab.py on PTB small, 10 retraining epochs from 0.1 under a CUDA graph,
#      with dropout 0.2 and without, every method at 5/6.6/10/20x (pruning now retrains under the graph too),
#      adopting the finished runs of stop 14 through --reuse (its partial result files, carried as runs/prev/).
#   4. Once the medium baseline is there: doped KP at 25x with CMR 0.3 and CMR 0 (the ablation).
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
timeout 240 python3 benchmarks/speed.py --devices cuda --rate 6.6 --rounds 3 --cuda-graph --breakdown --bag-lookup \
  --methods groupreduce,svd,groupreduce+q8 --matmul-precision high --out runs/results/vocab_speed_gpu_bag_tf32.json \
  > runs/logs/speed_bag_tf32.log 2>&1
stamp "speed exit $?"; tail -14 runs/logs/speed_bag_tf32.log
(timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_graph_training.py \
  > runs/logs/gpu_tests.log 2>&1; stamp "gpu tests exit $?"; tail -3 runs/logs/gpu_tests.log) &
base() {  # corpus preset
  [ -f runs/baselines/$1-$2/manifest.json ] && return 0
  python3 benchmarks/baselines.py --data .data --runs $1:$2 --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_$1_$2.json --time-limit $(left) >> runs/logs/baseline_$2.log 2>&1
  stamp "baseline $2 exit $?"
  [ -f runs/baselines/$1-$2/manifest.json ]
}
vocab() {  # name extra-args...
  local name=$1; shift
  local common="--baseline runs/baselines/ptb-small --data .data --device cuda --precision fp32 --cuda-graph
    --finetune-epochs 10 --finetune-lr 0.1 --num-blocks 10 --rank-rule sqrt_frequency --work runs/vocab_$name
    --results runs/results/vocab_ptb_small_$name.json"
  python3 benchmarks/vocab.py $common --reuse runs/prev/vocab_ptb_small_$name.json "$@" --time-limit $(left) \
    >> runs/logs/vocab_$name.log 2>&1
  rc=$?; stamp "vocab $name exit $rc"
  if [ $rc = 2 ]; then  # --reuse refused (another dense model): everything runs here
    python3 benchmarks/vocab.py $common "$@" --time-limit $(left) >> runs/logs/vocab_$name.log 2>&1
    stamp "vocab $name (no reuse) exit $?"
  fi
}
doped() {
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods doped_kp,doped_kp:cmr=0 --epochs 20 --lr 1 --anneal-end 0.25 \
    --jobs 2 --no-cpu-latency --out runs/results/recurrent_medium_e20_lr1_anneal0.25_cmr.json --work runs/rec-cmr \
    --time-limit $(left) >> runs/logs/rec_cmr.log 2>&1
  stamp "doped exit $?"
}
if base ptb small; then
  (base ptb medium && doped) &
  vocab ft10_drop0.2 --methods dense_retrained,svd,prune,groupreduce,groupreduce_q --rates 5,6.6,10,20 --gq-rates 26 \
    --finetune-dropout 0.2 --jobs 4 &
  vocab ft10_graph --methods dense_retrained,svd,prune,quantize,groupreduce,groupreduce_q --rates 5,6.6,10,20 \
    --gq-rates 26,52 --jobs 3 &
  wait
fi
stamp "all done"
touch runs/DRIVER_DONE
