#!/bin/bash
# stop-20 driver 1 (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. GPU tests (test_gpu.py after stop 19's review, the distillation graph test).
#   2. PTB small baseline alone.
#   3. lane V (vocabulary, PTB small, 10 epochs from 0.1 under a CUDA graph, retrained against the dense model):
#      A: distill 1 at 6.6x / 26x (GR, GR+q8, SVD, pruning, dense control) beside B1: GR+q4 at 26x, distill 1;
#      then C: distill 1 at 5/10/20x and GR+q8 52x; then B2: distill 0.5 at 6.6x / 26x.
#   lane R (recurrent, PTB medium): baseline, then doped KP and LMF at 25x, 20 epochs, distill 1.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 45 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_graph_training.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $?"
python3 benchmarks/baselines.py --data .data --runs ptb:small --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_small.json --time-limit $(left) >> runs/logs/baseline_small.log 2>&1
stamp "baseline small exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/ptb-small --corpus ptb --preset small --data .data --device cuda --precision fp32 --cuda-graph --finetune-epochs 10 --finetune-lr 0.1 --num-blocks 10 --rank-rule sqrt_frequency"
lane_v() {
  $V --distill 1 --methods groupreduce,groupreduce_q,svd,prune,dense_retrained --rates 6.6 --gq-rates 26 --jobs 5 \
    --work runs/v-kd1 --results runs/results/vocab_ptb_small_kd1.json --time-limit $(left) > runs/logs/v_kd1.log 2>&1 &
  $V --distill 1 --gq-bits 4 --methods groupreduce_q --gq-rates 26 --jobs 1 \
    --work runs/v-kd1-q4 --results runs/results/vocab_ptb_small_kd1_q4.json --time-limit $(left) > runs/logs/v_kd1_q4.log 2>&1 &
  wait; stamp "lane V A+B1 done"
  $V --distill 1 --methods groupreduce,groupreduce_q,svd,prune --rates 5,10,20 --gq-rates 52 --jobs 6 \
    --work runs/v-kd1 --results runs/results/vocab_ptb_small_kd1.json --time-limit $(left) >> runs/logs/v_kd1.log 2>&1
  stamp "lane V C exit $?"
  $V --distill 0.5 --methods groupreduce,groupreduce_q,dense_retrained --rates 6.6 --gq-rates 26 --jobs 3 \
    --work runs/v-kd05 --results runs/results/vocab_ptb_small_kd05.json --time-limit $(left) > runs/logs/v_kd05.log 2>&1
  stamp "lane V B2 exit $?"
}
lane_r() {
  python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
  stamp "baseline medium exit $?"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --epochs 20 --lr 1 --anneal-end 0.25 \
    --methods "doped_kp:cmr=0;distill=1,lmf:lr=0.2;lr_end=0.005;distill=1" --no-speed --jobs 2 \
    --out runs/results/recurrent_medium_e20_kd1.json --work runs/rec-kd1 --time-limit $(left) >> runs/logs/rec_kd1.log 2>&1
  stamp "rec kd1 exit $?"
}
lane_v > runs/lane_v.log 2>&1 &
lane_r > runs/lane_r.log 2>&1 &
wait
cat runs/lane_v.log runs/lane_r.log
stamp "all done"
touch runs/DRIVER_DONE
