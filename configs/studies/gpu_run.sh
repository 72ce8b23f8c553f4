#!/usr/bin/env bash
# The GPU image study (docs/results.md section 3) as one call on a GPU machine: start CUDA MPS
# (kept only if a client works), then configs/studies/gpu_fmnist.py with the arguments given.
#   OUT=<results dir> DATA=<folder holding fashion-mnist/> BUDGET=470 WORK=/tmp/gpuwork \
#       bash configs/studies/gpu_run.sh --teacher-epochs 15 --max-epochs 30
# The session copied the .gz files to .gpu_data/fashion-mnist/ (git-ignored) and sent that along.
set -u
mkdir -p "$OUT"
S=$OUT/setup.log
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch,sys;print(torch.__version__, sys.version.split()[0])"; } >"$S" 2>&1
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
if command -v nvidia-cuda-mps-control >/dev/null; then
  nvidia-cuda-mps-control -d >>"$S" 2>&1  # "already running" on a warm machine is fine
  if timeout 45 python3 -c "import torch; x=torch.ones(4,device='cuda'); print('mps client ok', float(x.sum()))" >>"$S" 2>&1; then
    echo "MPS on" >>"$S"
  else
    echo quit | nvidia-cuda-mps-control; sleep 2; echo "MPS off (client failed)" >>"$S"
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
else
  echo "MPS not available" >>"$S"; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
cat "$S"
PYTHONUNBUFFERED=1 python3 configs/studies/gpu_fmnist.py --data-root "${DATA:-.gpu_data}" --out "$OUT" \
  --work "${WORK:-/tmp/gpuwork}" --budget-s "${BUDGET:-470}" "$@" 2>&1 | tee "$OUT/stdout.log"
nvidia-smi >>"$S" 2>&1
