#!/bin/bash
# stop-24 driver C (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. the GPU tests at HEAD (with the auto serving path's CUDA test).
#   2. PTB medium baseline, then recurrent.py at 25x, 20 epochs, doping at its final density from 25% of training:
#      more seeds of the two best recipes, so that doped KP's low-rank corner and LMF meet at the same rate with
#      three seeds each: seed 2 of both at lr 0.5 -> 0.01, and seed 1 of LMF at lr 0.5.
total=$1; T0=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -m pytest -q -p no:warnings -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_graph_training.py tests/test_speed.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $? ($(tail -1 runs/logs/gpu_tests.log))"
python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
stamp "baseline medium exit $?"
a='a_shape=[2600,1];cmr=0'
R="python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data
  --device cuda --precision fp32 --ratios 25 --epochs 20 --anneal-end 0.25 --no-speed"
$R --methods "doped_kp:$a;kp_share=0.5;lr=0.5;lr_end=0.01,lmf:lr=0.5;lr_end=0.01" --jobs 2 --seed 2 \
  --out runs/results/recurrent_medium_e20_doped_lowrank_seed2.json --work runs/rec-s2 --time-limit $(left) >> runs/logs/rec_s2.log 2>&1 &
sleep 20
$R --methods "lmf:lr=0.5;lr_end=0.01" --jobs 1 --seed 1 \
  --out runs/results/recurrent_medium_e20_lmf_lr0.5_seed1.json --work runs/rec-s1 --time-limit $(left) >> runs/logs/rec_s1.log 2>&1
stamp "recurrent seed 1 exit $?"
wait
stamp "all done"
touch runs/DRIVER_DONE
