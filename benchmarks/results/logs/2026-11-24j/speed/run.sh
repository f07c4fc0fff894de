#!/bin/bash
# stop-23 machine A, last call: GPU tokens/s at the PTB-large shape (V 10000, H 1500), random weights, TF32 as in
# vocab.py's retraining process: GroupReduce 5x now takes the per-block path ("auto" counts its factors beside the
# block-diagonal cache), next to 6.6x (block-diagonal), SVD, pruning and 4-bit quantization
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for r in 5 6.6; do
  timeout 150 python3 benchmarks/speed.py --devices cuda --vocab 10000 --hidden 1500 --rate $r --rounds 3 \
    --methods groupreduce,svd,prune,quantize-4bit --matmul-precision high --out $OUT/speed_large_$r.json
done
