#!/bin/bash
# One lent-GPU session: install carried wheels, run the GPU tests and benchmarks, keep logs in $OUT.
# Usage on the device machine: bash bench/gpu_session.sh [tests|throughput|adapters|packing|dpo|all]...
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD/src:$PWD} PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/device.txt"
for what in "${@:-all}"; do
  case $what in
    tests|all) timeout 420 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -x -o addopts="" 2>&1 | tail -30 | tee "$OUT/gpu_tests.log" ;;&
    throughput|all) timeout 300 python3 bench/throughput.py --size 1b --seq-len 4096 --rows 2 --adapters full,lora --attn sdpa,flex_attention --steps 8 --warmup 3 --json "$OUT/throughput.json" 2>&1 | grep -v Warning | tail -12 | tee "$OUT/throughput.log" ;;&
    adapters|all) timeout 300 python3 bench/adapters.py --device cuda --dtype bf16 --size 1b --seq-len 1024 --batch-size 8 --steps 8 --warmup 3 --json "$OUT/adapters.json" 2>&1 | tail -10 | tee "$OUT/adapters.log" ;;&
    packing|all) [ -f bench/packing.py ] && timeout 300 python3 bench/packing.py --device cuda --dtype bf16 --model-size 1b 2>&1 | tail -20 | tee "$OUT/packing.log" ;;&
    dpo|all) [ -f bench/dpo.py ] && timeout 300 python3 bench/dpo.py --device cuda --dtype bf16 --size 1b --batch-size 8 --seq-len 512 --steps 20 --warmup 3 --json "$OUT/dpo.json" 2>&1 | grep -v -i warn | tail -10 | tee "$OUT/dpo.log" ;;&
  esac
done
