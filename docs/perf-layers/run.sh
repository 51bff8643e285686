#!/bin/bash
# Issue 28: the sampler and the full-OPD step before the package moved into layers (a worktree
# of 4091d1a at /work/pre-move) and after (this checkout), in turn, on the long zoo at 512
# tokens, 2 threads. Outputs: docs/perf-layers/{rvg,trl}-{after,before}*.txt
#   git worktree add /work/pre-move 4091d1a && bash docs/perf-layers/run.sh
set -u
for side in after before; do
  if [ $side = before ]; then cd /work/pre-move; export PYTHONPATH=/work/pre-move; else cd "$(dirname "$0")/../.."; unset PYTHONPATH; fi
  python benchmarks/rollout_vs_generate.py --zoo pruneopd/zoo_weights/long --task loop --threads 2 --new-tokens 512 --steps 3
  python benchmarks/peer_trl.py --zoo pruneopd/zoo_weights/long --task loop --threads 2 --new-tokens 512 --steps 6
done
