#!/usr/bin/env bash
# Multi-node training with SLURM: one task (process) per node, each driving all its GPUs.
# jax.distributed.initialize() reads the coordinator, process count and id from SLURM.
#
#   sbatch --nodes=4 scripts/slurm_train.sh --config voc_jax/configs/voc07_alexnet.py \
#       --workdir /shared/runs/ref32 --config.images_per_step=32 ...
#
# The workdir must be on a filesystem all nodes see (orbax checkpoints are written by all).
#SBATCH --job-name=voc-jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
source .venv/bin/activate
srun python -m voc_jax.train "$@" --config.distributed=True
