#!/bin/sh
# Train the built-in shapes model from scratch and write it to fastdiff/assets/shapes.
# Usage: sh examples/shapes/train_all.sh [WORK [THREADS]]   (from the repository root)
# WORK keeps checkpoints: rerun the same command after an interruption to resume.
set -e
WORK=${1:-/tmp/shapes}
THREADS=${2:-2}
python -m examples.shapes.train_vae --work "$WORK" --threads "$THREADS"
python -m examples.shapes.train_unet --work "$WORK" --threads "$THREADS"
python -m examples.shapes.build_model --work "$WORK"
