#!/bin/bash
# The GPU check prepared for a session with a device machine (not run yet: none was lent).
# What travels there: the working tree, plus two git-ignored folders named in the tool's `carry`:
#   .whl/       Python 3.12 wheels the device lacks (dvc, dvclive, albumentations, timm 1.0.31, ...)
#   .realdata/  a copy of ../shared/data/eyepacs-dev (delete it after the session)
# On the device: install the wheels, record the environment, run bench/train.py on CUDA with fp16
# autocast + channels_last, then the full ablation (16 variants x 3 seeds) with 8 queue workers on
# the one GPU, and bring back `dvc exp show --json` and the rendered table through $OUT.
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo "pip install failed"; exit 3; }
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:/opt/torch/.venv/bin:$PATH DVC_NO_ANALYTICS=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
command -v python >/dev/null || ln -s "$(command -v python3)" /tmp/site/bin/python
el "installed"
{ nvidia-smi; nproc; free -g; python -c "import torch, timm, albumentations, dvc, dvclive, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0)); print('timm', timm.__version__, 'albumentations', albumentations.__version__, 'dvc', dvc.__version__, 'opencv', cv2.__version__)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt | tail -3
# data: ../shared/data/eyepacs-dev as on the development machine, pointing at a copy outside the repo
cp -r .realdata/eyepacs-dev /tmp/eyepacs-dev && mkdir -p ../shared/data && ln -sfn /tmp/eyepacs-dev ../shared/data/eyepacs-dev
if [ ! -d .git ]; then git init -q && git add -A && git -c user.email=gpu@drgrade -c user.name=gpu commit -qm "device snapshot"; fi
git config user.email >/dev/null || { git config user.email gpu@drgrade; git config user.name gpu; }
el "git ready: $(git log --oneline | head -1)"
# 1. CUDA training bench: fp16 autocast + GradScaler, channels_last, 384 px
timeout 75 python bench/train.py --device cuda --amp --channels-last --image-size 384 --cache-size 384 --batch-size 64 --batches 20 --warmup 4 --num-workers 6 > $OUT/bench_train_cuda.txt 2>&1
el "bench rc=$?"; tail -12 $OUT/bench_train_cuda.txt
# 2. the ablation: 16 variants x 3 seeds, 8 workers on one GPU
python bench/ablation.py queue --seeds 1 2 3 > $OUT/queue.log 2>&1 || { echo "queue failed"; tail -20 $OUT/queue.log; }
el "queued $(dvc queue status 2>/dev/null | grep -c Queued)"
python bench/ablation.py run -j 8 --deadline-s ${DEADLINE:-300} > $OUT/run.log 2>&1
el "run done"; grep -v "dvc queue status" $OUT/run.log | tail -50
python bench/ablation.py table --save-json $OUT/exp_show.json --out $OUT/ablation.md 2>/dev/null
cat $OUT/ablation.md
for t in $(dvc queue status 2>/dev/null | awk '/Failed/{print $2}' | head -3); do echo "== $t"; dvc queue logs $t 2>&1 | tail -25; done > $OUT/failed_logs.txt
tail -60 $OUT/failed_logs.txt
el "end"
