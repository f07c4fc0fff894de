#!/bin/bash
# stop-24 driver B (one H100), started detached (setsid) by call 1; later calls only wait and collect (no carry).
#   1. the GPU tests at HEAD (with the new rebuilt-dense-under-inference-mode test) and, alone on the GPU, speed.py
#      --target lstm --rebuilt on CUDA at 35-token windows and at 1-token windows (generation), batch 64: compact
#      maps step by step against the rebuilt dense weights in cuDNN (machine A's attempt crashed: a non-contiguous
#      rebuilt weight, fixed).
#   2. PTB medium baseline, then recurrent.py at 25x, 20 epochs, doping at the final density from 25% of training:
#      the untested corners of stop 23's best (doped KP with a_shape=[2600,1], low rank + sparse): lr 1, kp_share
#      0.4 / 0.6 at lr 0.5, LMF at lr 0.5 (is the lead the learning rate's?), and a second seed of the best doped
#      KP and of LMF's best recipe (run-to-run noise).
total=$1; T0=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -m pytest -q -p no:warnings -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_graph_training.py tests/test_speed.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $? ($(tail -1 runs/logs/gpu_tests.log))"
for T in 35 1; do
  python3 benchmarks/speed.py --target lstm --hidden 650 --rate 25 --devices cuda --rounds 3 --rebuilt --seq-len $T \
    --out runs/results/recurrent_speed_gpu_T$T.json > runs/logs/speed_T$T.log 2>&1
  stamp "speed T=$T exit $?"
done
python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_medium.json --time-limit $(left) >> runs/logs/baseline_medium.log 2>&1
stamp "baseline medium exit $?"
a='a_shape=[2600,1];cmr=0'
R="python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data
  --device cuda --precision fp32 --ratios 25 --epochs 20 --anneal-end 0.25 --no-speed"
M="doped_kp:$a;kp_share=0.5;lr=1.0;lr_end=0.02,doped_kp:$a;kp_share=0.4;lr=0.5;lr_end=0.01"
M="$M,doped_kp:$a;kp_share=0.6;lr=0.5;lr_end=0.01,lmf:lr=0.5;lr_end=0.01"
$R --methods "$M" --jobs 4 --out runs/results/recurrent_medium_e20_doped_lowrank2.json --work runs/rec-dlr2 \
  --time-limit $(left) >> runs/logs/rec_dlr2.log 2>&1 &
sleep 20
M="doped_kp:$a;kp_share=0.5;lr=0.5;lr_end=0.01,lmf:lr=0.2;lr_end=0.005"
$R --methods "$M" --jobs 2 --seed 1 --out runs/results/recurrent_medium_e20_doped_lowrank_seed1.json --work runs/rec-s1 \
  --time-limit $(left) >> runs/logs/rec_s1.log 2>&1
stamp "recurrent seed 1 exit $?"
wait
stamp "all done"
touch runs/DRIVER_DONE
