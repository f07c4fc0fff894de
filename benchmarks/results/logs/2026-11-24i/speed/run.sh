#!/bin/bash
# stop-22 call 11: GPU tokens/s of GroupReduce, SVD and pruning at 5x / 10x / 20x on the PTB-large shape (V 10000,
# H 1500) and then the WikiText-2-medium shape (V 33278, H 650), random weights, TF32 as in vocab.py's retraining process
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/tensorly*.whl .whl/platformdirs*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
for shape in "10000 1500 large" "33278 650 wt2"; do
  set -- $shape
  for r in 5 10 20; do
    if [ $(( $(date +%s) - T0 )) -gt 270 ]; then echo "skip $3 $r (time)"; continue; fi
    timeout 150 python3 benchmarks/speed.py --devices cuda --vocab $1 --hidden $2 --rate $r --rounds 3 \
      --methods groupreduce,svd,prune --matmul-precision high --out $OUT/speed_$3_$r.json 2>&1 | grep "^|" | head -6
    echo "[$(( $(date +%s) - T0 )) s] $3 $r done"
  done
done
