#!/bin/bash
# session-14 driver, machine 1 (one H100). Run it from a copy outside benchmarks/. Resumable: rerun with the same
# argument (seconds for this call) until everything is done.
#   1. GPU tests of the changed layers (tests/test_gpu.py, tests/test_speed.py).
#   2. speed.py at the PTB-large shape, 6.6x: GroupReduce with the rule's ranks against ranks rounded to multiples
#      of 8 (every block GEMM operand 32-byte aligned), TF32 and true fp32, eager and CUDA graph, with breakdown.
#   3. PTB small baseline alone; then, side by side: the PTB medium baseline; vocab.py on PTB small (10 retraining
#      epochs from 0.1 under a CUDA graph, 5/6.6/10/20x, GroupReduce+q 26/52x); the same with dropout 0.2 while
#      retraining (GroupReduce, GroupReduce+q, pruning at 5/6.6/20x); once the medium baseline is there, doped KP at
#      25x (20 epochs, lr 1, doping final from 25%) with CMR 0.3 and with CMR 0 (the ablation).
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 40 )); }
if [ ! -f runs/done_gputest ]; then
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_speed.py > runs/logs/gpu_tests.log 2>&1
  touch runs/done_gputest; tail -3 runs/logs/gpu_tests.log
fi
for prec in high highest; do
  if [ ! -f runs/done_speed_$prec ]; then
    timeout 200 python3 benchmarks/speed.py --devices cuda --rate 6.6 --rounds 3 --cuda-graph --breakdown \
      --methods groupreduce,groupreduce-r8,svd,groupreduce+q8,groupreduce-r8+q8 --matmul-precision $prec \
      --out runs/results/vocab_speed_gpu_aligned_$prec.json > runs/logs/speed_$prec.log 2>&1 && touch runs/done_speed_$prec
    tail -12 runs/logs/speed_$prec.log
  fi
done
base() {  # corpus preset
  [ -f runs/baselines/$1-$2/manifest.json ] && return 0
  python3 benchmarks/baselines.py --data .data --runs $1:$2 --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_$1_$2.json --time-limit $(left) >> runs/logs/baseline_$2.log 2>&1
  [ -f runs/baselines/$1-$2/manifest.json ]
}
vocab() {  # name extra-args...
  [ -f runs/done_vocab_$1 ] && return
  local name=$1; shift
  python3 benchmarks/vocab.py --baseline runs/baselines/ptb-small --data .data --device cuda --precision fp32 --cuda-graph \
    --finetune-epochs 10 --finetune-lr 0.1 --num-blocks 10 --rank-rule sqrt_frequency "$@" \
    --work runs/vocab_$name --results runs/results/vocab_ptb_small_$name.json --time-limit $(left) >> runs/logs/vocab_$name.log 2>&1 \
    && touch runs/done_vocab_$name
  echo "vocab $name exit $?"
}
doped() {  # CMR 0.3 (the default) and CMR 0 side by side, one result file
  [ -f runs/done_doped ] && return
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods doped_kp,doped_kp:cmr=0 --epochs 20 --lr 1 --anneal-end 0.25 \
    --jobs 2 --no-cpu-latency --out runs/results/recurrent_medium_e20_lr1_anneal0.25_cmr.json --work runs/rec-cmr \
    --time-limit $(left) >> runs/logs/rec_cmr.log 2>&1 && touch runs/done_doped
  echo "doped exit $?"
}
chainM() { base ptb medium && doped; }
if base ptb small; then
  vocab ft10_graph --methods svd,prune,quantize,groupreduce,groupreduce_q --rates 5,6.6,10,20 --gq-rates 26,52 --jobs 6 &
  vocab ft10_drop0.2 --methods groupreduce,groupreduce_q,prune --rates 5,6.6,20 --gq-rates 26 --finetune-dropout 0.2 --jobs 4 &
  chainM &
  while [ $(left) -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  if [ -n "$(jobs -r)" ]; then  # out of time: SIGINT lets every script save and say where it stopped
    pkill -INT -f "benchmarks/(baselines|vocab|recurrent).py"; sleep 25; pkill -KILL -f "benchmarks/(baselines|vocab|recurrent).py"; fi
  wait
fi
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
for f in runs/logs/*.log; do echo "--- $f"; grep -v Warning $f | grep -v "torch.lstm\|warn" | tail -4; done
grep -h "finetune epoch" runs/vocab_*/*.log runs/vocab_*/*/*.log 2>/dev/null | tail -4
grep -h "epoch" runs/rec-*/runs/*/log.txt 2>/dev/null | tail -4
ls runs/done_* 2>/dev/null
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null); cd ..
