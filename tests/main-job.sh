#!/usr/bin/env bash
# The README's main job (`make run`): the default sweep of gpt3-small shapes (3 stages,
# batch 64, seq 2048, compute emulated as a V100 on real-size tensors) over both schedules,
# micro-batch sizes 1, 2, 4 and the four reference network profiles, into a new results
# directory. Three measured iterations per cell keep it within about ten minutes on two cores.
set -eu
cd "$(dirname "$0")/.."
out=${PIPENEM_OUT:-results/sweep-$(date +%Y%m%d-%H%M%S)}
exec ./pipenem sweep --iters 3 --warmup 1 --out "$out"
