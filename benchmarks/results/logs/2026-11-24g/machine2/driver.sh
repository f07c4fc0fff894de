#!/bin/bash
# stop-20 driver 2 (one H100; machine 1 was lost after call 2, its A+B1 results came back and are reused here).
#   lane V: PTB small baseline alone, then (retrained against the dense model, weight 1, 10 epochs, CUDA graph)
#     L: first rates 1 and 0.01 at 6.6x / 26x for GR, GR+q8, SVD, pruning (the 0.1 runs adopted from machine 1),
#     C: 5/10/20x and GR+q8 52x at first rate 0.1 (extends machine 1's file).
#   lane R (after the small baseline): PTB medium baseline, then doped KP and LMF at 25x, 20 epochs, distill 1.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 45 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 benchmarks/baselines.py --data .data --runs ptb:small --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_small.json --time-limit $(left) >> runs/logs/baseline_small.log 2>&1
stamp "baseline small exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/ptb-small --corpus ptb --preset small --data .data --device cuda --precision fp32 --cuda-graph --finetune-epochs 10 --num-blocks 10 --rank-rule sqrt_frequency --distill 1"
lane_v() {
  $V --finetune-lr 1,0.1,0.01 --reuse runs/prev/vocab_ptb_small_kd1.json --methods groupreduce,groupreduce_q,svd,prune \
    --rates 6.6 --gq-rates 26 --jobs 6 --work runs/v-kd1-lrs --results runs/results/vocab_ptb_small_kd1_lrs.json \
    --time-limit $(left) > runs/logs/v_kd1_lrs.log 2>&1
  stamp "lane V L exit $?"
  $V --finetune-lr 0.1 --methods groupreduce,groupreduce_q,svd,prune --rates 5,10,20 --gq-rates 52 --jobs 6 \
    --work runs/v-kd1 --results runs/results/vocab_ptb_small_kd1.json --time-limit $(left) > runs/logs/v_kd1_c.log 2>&1
  stamp "lane V C exit $?"
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
