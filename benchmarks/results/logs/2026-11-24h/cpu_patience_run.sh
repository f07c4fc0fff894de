#!/bin/bash
cd /work/main
export OMP_NUM_THREADS=2
date
.venv/bin/lmshrink train --corpus ptb --preset small --data ../shared/data --device cpu --out /tmp/cpuexp/ptb-small --no-progress --json > /tmp/cpuexp/train.json 2> /tmp/cpuexp/train.err
echo "train exit $?"; date
for p in 0 2; do
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vocab.py --baseline /tmp/cpuexp/ptb-small --corpus ptb --preset small --data ../shared/data \
    --device cpu --cpu-threads 1 --methods groupreduce --rates 6.6 --num-blocks 10 --rank-rule log_frequency --refine-iters 3 \
    --finetune-epochs 6 --finetune-lr 1 --finetune-patience $p --work /tmp/cpuexp/w$p --results /tmp/cpuexp/pat$p.json > /tmp/cpuexp/pat$p.log 2>&1 &
done
wait; date; echo done
