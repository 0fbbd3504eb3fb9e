#!/usr/bin/env bash
# The main job: the pipeline on the embedded synthetic data with the tiny backbone, in a few minutes
# on a laptop CPU. Usage: bash examples/quickstart.sh [OUT]   (default runs/quickstart)
# QUICKSTART_USERS and QUICKSTART_EPOCHS shrink it further (the test suite runs it that way).
set -euo pipefail

out=${1:-runs/quickstart}
users=${QUICKSTART_USERS:-1000}
epochs=${QUICKSTART_EPOCHS:-30}
rm -rf "$out/sasrec" "$out/teacher"

distill prepare --synthetic --num-users "$users" --num-items 500 --output "$out/data" --overwrite
distill student-train --data "$out/data" --output "$out/sasrec" \
    --epochs "$epochs" --max-len 50 --hidden 64 --lr 0.002 --patience 5
distill teacher-train --data "$out/data" --sasrec "$out/sasrec" --llm tiny --output "$out/teacher" \
    --teacher moe-lora --epochs 1 --samples-per-user 1 --max-len 10 --batch-size 16
distill evaluate --run "$out/teacher" --data "$out/data" --split test
