#!/bin/bash
# stop-23 driver B (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. WikiText-2 medium and PTB medium baselines side by side.
#   2. as soon as PTB medium is trained: recurrent.py on it, 25x, 20 epochs, doping at the final density from 25%
#      of training: doped KP whose Kronecker factors are (4H x 1) (x) (1 x in), a sum of rank-1 terms, i.e. low rank
#      + sparse doping (the papers' "doped LMF"), the budget split by kp_share; LMF at its best recipe beside it.
#      (Machine A's attempt failed to start: --methods split a_shape=[2600,1] at its comma; fixed.)
#   3. when WikiText-2 is trained: vocab.py quantization 5x / 10x, the runs vocab_wikitext2_medium_rates.json lacks.
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
(
  python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
  stamp "baseline medium exit $?"
  a='a_shape=[2600,1];cmr=0'
  M="doped_kp:$a;kp_share=0.5;lr=0.2;lr_end=0.005,doped_kp:$a;kp_share=0.7;lr=0.2;lr_end=0.005"
  M="$M,doped_kp:$a;kp_share=0.5;lr=0.5;lr_end=0.01,doped_kp:$a;kp_share=0.3;lr=0.5;lr_end=0.01,lmf:lr=0.2;lr_end=0.005"
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --methods "$M" --epochs 20 --anneal-end 0.25 --no-speed \
    --jobs 5 --out runs/results/recurrent_medium_e20_doped_lowrank.json --work runs/rec-dlr \
    --time-limit $(left) >> runs/logs/rec_dlr.log 2>&1
  stamp "recurrent exit $?"
) &
python3 benchmarks/baselines.py --data .data --runs wikitext-2:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_wikitext2_medium.json --time-limit $(left) >> runs/logs/baseline_wt2.log 2>&1
stamp "baseline wikitext-2 medium exit $?"
V="python3 benchmarks/vocab.py --baseline runs/baselines/wikitext-2-medium --corpus wikitext-2 --preset medium --data .data
  --device cuda --num-blocks 10 --rank-rule sqrt_frequency --refine-iters 3 --finetune-epochs 6 --finetune-lr 0.01
  --methods prune,quantize,groupreduce_q,groupreduce,svd --rates 5,10,20 --gq-rates 26,52 --jobs 7 --work runs/v-wt2
  --results runs/results/vocab_wikitext2_medium_rates.json"
$V --reuse benchmarks/results/vocab_wikitext2_medium_rates.json --time-limit $(left) > runs/logs/v_wt2.log 2>&1
stamp "vocab wikitext-2 exit $?"
wait
stamp "all done"
touch runs/DRIVER_DONE
