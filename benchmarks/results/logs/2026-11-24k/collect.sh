#!/bin/bash
# wait (at most $1 s) for the detached driver, show progress, and send back what is there so far
T0=$(date +%s)
while [ ! -f runs/DRIVER_DONE ] && [ $(( $(date +%s) - T0 )) -lt $1 ]; do sleep 10; done
grep -v "Warn\|warn" runs/driver.log | tail -20
for f in runs/logs/*.log; do echo "--- $f"; grep -v "Warn\|warn\|torch.lstm\|W = " $f | grep "ratio\|failed in\|refused\|test ppl\|exit\|adopted\|error\|Error\|passed\|failed\|done\|epoch" | tail -16; done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
cd runs && tar czf $OUT/results.tgz results logs driver.log $(ls baselines/*.log 2>/dev/null) 2>/dev/null; cd ..
ls -la $OUT | tail -2
