#!/bin/bash
# the GPU tests at HEAD, beside the detached driver (the tests time nothing against targets)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:warnings -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_graph_training.py tests/test_speed.py > runs/logs/gpu_tests.log 2>&1
echo "gpu tests exit $?" >> runs/logs/gpu_tests.log
tail -30 runs/logs/gpu_tests.log
