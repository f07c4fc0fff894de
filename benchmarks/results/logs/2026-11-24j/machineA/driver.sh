#!/bin/bash
# stop-23 driver A (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. PTB large and PTB medium baselines side by side.
#   2. side by side:
#      a. vocab.py on PTB large: quantization 5x / 6.6x / 10x and GroupReduce+q8 52x, the runs
#         vocab_ptb_large_rates.json lacks (its recipe; its finished runs adopted with --reuse);
#      b. recurrent.py on PTB medium, 25x, 20 epochs: doped KP whose Kronecker factors are (4H x 1) (x) (1 x in),
#         i.e. a sum of rank-1 terms: low rank + sparse doping (the papers' "doped LMF"), budget split by kp_share.
#         (Failed to start: recurrent.py then split --methods at every comma, a_shape=[2600,1] included; fixed, and
#         the runs moved to machine B.)
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1 &
python3 benchmarks/baselines.py --data .data --runs ptb:large --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_large.json --time-limit $(left) >> runs/logs/baseline_large.log 2>&1
stamp "baseline large exit $?"
wait; stamp "baseline medium done"
if [ -f runs/baselines/ptb-medium/manifest.json ]; then
  a='a_shape=[2600,1];cmr=0'
  M="doped_kp:$a;kp_share=0.5;lr=0.2;lr_end=0.005,doped_kp:$a;kp_share=0.7;lr=0.2;lr_end=0.005"
  M="$M,doped_kp:$a;kp_share=0.5;lr=0.5;lr_end=0.01,doped_kp:$a;kp_share=0.3;lr=0.5;lr_end=0.01"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods "$M" --epochs 20 --anneal-end 0.25 --no-speed \
    --jobs 4 --out runs/results/recurrent_medium_e20_doped_lowrank.json --work runs/rec-dlr \
    --time-limit $(left) >> runs/logs/rec_dlr.log 2>&1 &
fi
V="python3 benchmarks/vocab.py --baseline runs/baselines/ptb-large --corpus ptb --preset large --data .data --device cuda
  --num-blocks 10 --rank-rule sqrt_frequency --refine-iters 3 --finetune-epochs 10 --finetune-lr 0.1
  --finetune-lr-for svd=0.01 --finetune-lr-for groupreduce_q=0.01 --methods groupreduce,prune,svd,quantize,groupreduce_q
  --rates 5,6.6,10,20 --gq-rates 26,52 --jobs 8 --work runs/v-large --results runs/results/vocab_ptb_large_rates.json"
$V --reuse benchmarks/results/vocab_ptb_large_rates.json --time-limit $(left) > runs/logs/v_large.log 2>&1
stamp "vocab large exit $?"
wait; stamp "recurrent exit"
stamp "all done"
touch runs/DRIVER_DONE
