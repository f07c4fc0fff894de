#!/bin/bash
# stop-19 driver 3 (one H100), started detached (setsid) by call 1; later calls only wait and collect.
#   1. GPU tests (test_gpu.py), after "auto" learnt to skip the block-diagonal path at true fp32.
#   2. speed.py at the PTB-large shape again, TF32 then true fp32: the plain rows now run what "auto" picks.
#   3. PTB large baseline alone, then TT (fast order) at 25x retrained with the cell clamp (cell_clip 50).
total=$1; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 30 )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py > runs/logs/gpu_tests.log 2>&1
stamp "gpu tests exit $?"
for prec in high highest; do
  timeout 300 python3 benchmarks/speed.py --devices cuda --rate 6.6 --rounds 3 --blocks-path --cuda-graph \
    --methods groupreduce,svd,groupreduce+q8 --matmul-precision $prec \
    --out runs/results/vocab_speed_gpu_auto_$prec.json > runs/logs/speed_$prec.log 2>&1
  stamp "speed $prec exit $?"
done
python3 benchmarks/baselines.py --data .data --runs ptb:large --cuda-graph --precision fp32 --models runs/baselines \
  --results runs/results/baselines_ptb_large.json --time-limit $(left) >> runs/logs/baseline_large.log 2>&1
stamp "baseline large exit $?"
if [ -f runs/baselines/ptb-large/manifest.json ]; then
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-large --preset large --corpus ptb --data .data \
    --device cuda --precision fp32 --cuda-graph --ratios 25 --epochs 10 --methods "tt:lr=0.2;lr_end=0.005;cell_clip=50" \
    --no-speed --jobs 1 --out runs/results/recurrent_large_e10_tt_clip.json --work runs/rec-ttclip \
    --time-limit $(left) >> runs/logs/rec_ttclip.log 2>&1
  stamp "tt clip large exit $?"
fi
stamp "all done"
touch runs/DRIVER_DONE
