#!/usr/bin/env bash
# The GPU kit on the GPU host (bench/gpu/README.md), from the repository root of the run's copy:
#   bash bench/gpu/on-device.sh --receive     a transfer run: the carried part goes into .gpu_store, checked
#   bash bench/gpu/on-device.sh               the last run: receive, set up, then the stages in priority order
#   bash bench/gpu/on-device.sh --dry-run     anywhere, no CUDA: every stage's commands, schedule and verdicts
# Results, kit.log and verdicts.txt go to $OUT. BASE_PYTHON: the host's Python (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${BASE_PYTHON:-python3}" -m bench.gpu.on_device "$@"
