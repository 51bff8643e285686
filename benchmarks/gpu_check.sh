#!/usr/bin/env bash
# The GPU check (docs/scaling.md): one command on a machine with one H100/H200-class GPU and
# pruneopd installed with the CUDA vLLM (`pip install -e '.[vllm-gpu]'`). No downloads: the
# Qwen3-architecture pairs are made on the spot with random weights. Under 10 minutes; prints
# one table (lean vs vLLM rollouts, HF vs vLLM teacher scoring, one Prune-OPD step) and writes
# gpu_check.json. Extra arguments go to benchmarks/gpu_check.py (e.g. --sizes tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/gpu_check.py --device cuda --sizes tiny,0.5b --json gpu_check.json "$@"
