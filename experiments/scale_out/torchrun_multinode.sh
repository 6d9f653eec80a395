#!/bin/bash
# Multi-node training with torchrun (no scheduler). Run the same command on every node:
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 bash experiments/scale_out/torchrun_multinode.sh /path/to/model
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=1 bash experiments/scale_out/torchrun_multinode.sh /path/to/model
# Lightning detects the torchelastic environment that torchrun sets up.
set -euo pipefail
MODEL_PATH=${1:?usage: $0 /path/to/model}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
STRATEGY=${STRATEGY:-fsdp}
RUN_DIR=${RUN_DIR:-logs/train/torchrun/run}   # shared filesystem path, the same on every node

torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  train.py model=llama3_8b_instruct model.path="$MODEL_PATH" \
  trainer="$STRATEGY" trainer.num_nodes="$NNODES" trainer.devices="$GPUS" \
  adapter=dora data.packing=true hydra.run.dir="$RUN_DIR" ckpt_path=last_if_any "${@:2}"
