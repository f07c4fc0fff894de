#!/bin/bash
# session-10 driver, machine 1: PTB medium baseline (CUDA graph, alone), then a 25x retraining sweep
# usage: bash gpu_s10_rec.sh train|finish SECONDS
phase=$1; total=$2; T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p runs/results runs/logs
left() { echo $(( total - ($(date +%s) - T0) - 25 )); }
nvidia-smi --query-gpu=name,memory.used --format=csv
if [ ! -f runs/baselines/ptb-medium/manifest.json ]; then
  python3 benchmarks/baselines.py --data .data --runs ptb:medium --cuda-graph --precision fp32 --models runs/baselines \
    --results runs/results/baselines.json --time-limit $(left) > runs/logs/baseline_medium.log 2>&1
  tail -5 runs/logs/baseline_medium.log
fi
rec() {  # tag lr lr_end methods jobs [extra...]
  tag=$1 lr=$2 lre=$3 m=$4 j=$5; shift 5
  python3 benchmarks/recurrent.py --baseline runs/baselines/ptb-medium --preset medium --corpus ptb --data .data \
    --device cuda --precision fp32 --ratios 25 --epochs ${EP:-10} --lr $lr --lr-end $lre --methods $m --jobs $j \
    --out runs/results/recurrent_medium_e${EP:-10}_$tag.json --work runs/rec-$tag "$@" >> runs/logs/rec_$tag.log 2>&1
  echo "$tag exit $?"; tail -3 runs/logs/rec_$tag.log
}
if [ -f runs/baselines/ptb-medium/manifest.json ]; then
  if [ "$phase" = more ]; then
    L=$(left)
    EP=20 rec lr1e20 1.0 0.02 doped_kp,prune,lmf 3 --no-speed --time-limit $L &
    rec lr1 1.0 0.02 doped_kp,prune,lmf 1 --no-speed --time-limit $L &
    wait
    if [ "$3" = speed ]; then for t in "lr1 1.0 0.02 doped_kp,prune,lmf 1" "lr0.2 0.2 0.005 doped_kp,prune,lmf,hmd,kp 1"; do rec $t --no-cpu-latency --time-limit $(left); done; EP=20 rec lr1e20 1.0 0.02 doped_kp,prune,lmf 3 --no-cpu-latency --time-limit $(left); fi
  elif [ "$phase" = train ]; then
    L=$(left)
    rec lr1 1.0 0.02 doped_kp,prune 2 --no-speed --time-limit $L &
    rec lr0.2 0.2 0.005 doped_kp,prune,lmf,hmd,kp 5 --no-speed --time-limit $L &
    rec lr0.05 0.05 0.002 doped_kp 1 --no-speed --time-limit $L &
    wait
  else
    for t in "lr1 1.0 0.02 doped_kp,prune 2" "lr0.2 0.2 0.005 doped_kp,prune,lmf,hmd,kp 5" "lr0.05 0.05 0.002 doped_kp 1"; do
      rec $t --time-limit $(left)
    done
  fi
fi
cd runs && tar czf $OUT/results.tgz results logs $(ls -d rec-*/runs/*/log.txt baselines/*.log 2>/dev/null) ; cd ..
for f in runs/results/*.md; do echo "--- $f"; tail -25 $f; done
