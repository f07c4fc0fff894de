#!/bin/bash
# wait (at most $1 s) for the detached driver, show progress, and send back what is there so far
T0=$(date +%s)
while [ ! -f runs/DRIVER_DONE ] && [ $(( $(date +%s) - T0 )) -lt $1 ]; do sleep 10; done
cat runs/driver.log | grep -v "Warn\|warn" | tail -30
for f in $(ls runs/logs/*.log | grep -v gr_profile); do echo "--- $f"; grep -v "Warn\|warn\|torch.lstm\|W = " $f | grep ": ratio\|refused\|test ppl\|epoch\|exit\|adopted\|ppl" | tail -40; done
for f in runs/rec-*/runs/*/log.txt; do echo "--- $f"; tail -3 $f; done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
cd runs && tar czf $OUT/results.tgz results logs driver.log $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null) 2>/dev/null; cd ..
ls -la $OUT
echo "=== gpu tests"; tail -3 runs/logs/gpu_tests.log 2>/dev/null; for p in high highest; do echo "=== speed $p"; grep -A14 "^| method" runs/logs/speed_$p.log 2>/dev/null; done
