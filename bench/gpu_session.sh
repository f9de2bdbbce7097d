#!/bin/bash
# The GPU measurement of presets/real-gpu.yaml, as one prepared script for a session that has a device
# machine (one H200, 16 cores, no network, 64 MiB per call). Prepare here with bench/gpu_pack.sh, then:
#   run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpudata"], timeout_s=540)
# It runs the pipeline's own stage entry points (sources, split, preprocess, train: the commands of dvc.yaml)
# on the carried sample of both sources with the GPU preset's model, size, batch, precision and loader
# workers (stage 2 only, random weights: the rate depends on neither), then bench/model_only.py with the
# same params.yaml. The train stage runs twice: as the preset has it (train.augment_on: device, batched
# augmentation on the GPU) and with train.augment_on: workers (albumentations in the loader workers). Into $OUT:
#   env.txt             the machine and the package versions
#   train.log           the preset's train stage; each epoch's "train N images/s" is the pipeline's rate
#   train_workers.log   the same with augmentation in the loader workers
#   model_only.json     the same model, batch and precision on one batch already on the GPU
#   throughput.json     the rates and their ratios: the issue's target is a ratio of at least 0.8
# SMOKE=1 runs the same flow on this machine's CPU with a tiny model and size: it checks the script and
# measures nothing (tests/test_gpu_session.py). Outputs go to $WORK, never to the repository's data/ or models/.
set -uo pipefail
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
OUT=${OUT:-bench/out/gpu}
GPUDATA=${GPUDATA:-.gpudata}
WORK=${WORK:-/tmp/drgrade-gpu}
PY=${PY:-python3}
EPOCHS=${EPOCHS:-4}
mkdir -p "$OUT"; rm -rf "$WORK"; mkdir -p "$WORK"
if [ -d .whl ] && [ -z "${SMOKE:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "pip install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD
fi
export DVC_NO_ANALYTICS=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
el "installed"
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cores: $(nproc)"
  $PY -c "import cv2, timm, albumentations, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'albumentations', albumentations.__version__, 'opencv', cv2.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
[ -d "$GPUDATA" ] || { echo "$GPUDATA missing: run bench/gpu_pack.sh here first and carry it"; exit 4; }
export GPUDATA EPOCHS

# params.yaml for the measurement: the GPU preset on the carried sample; params_workers.yaml the same with
# augmentation in the loader workers
$PY - "$WORK/params.yaml" "$WORK/params_workers.yaml" <<'PY' || exit 5
import os, sys
from pathlib import Path

import yaml

from dr_core.config import params_from_dict
from dr_core.config.presets import merged, read_preset, unflatten

flat = merged("params.yaml", read_preset("presets/real-gpu.yaml"))
data = Path(os.environ["GPUDATA"]).resolve()
flat["data.sources"] = {s.name: {"labels_csv": str(s / "labels.csv"), "img_dir": str(s / "images")}
                        for s in sorted(data.iterdir()) if (s / "labels.csv").exists()}
flat.update({"train.epochs_stage1": 0, "train.epochs_stage2": int(os.environ["EPOCHS"]), "model.pretrained": False,
             "model.pretrained_file": "", "split.val": 0.1, "split.test": 0.1, "data.dedup_max_distance": -1})
if os.environ.get("SMOKE"):
    flat.update({"model.name": "resnet10t", "train.image_size": 48, "preprocess.cache_size": 48,
                 "train.batch_size": 8, "train.num_workers": 1, "train.device": "cpu", "train.epochs_stage2": 1})
for out, augment_on in ((sys.argv[1], flat["train.augment_on"]), (sys.argv[2], "workers")):
    tree = unflatten({**flat, "train.augment_on": augment_on})
    params_from_dict(tree)
    Path(out).write_text(yaml.safe_dump(tree, sort_keys=False))
PY
P="$WORK/params.yaml"
for s in $(ls "$GPUDATA"); do
  $PY -m stages.sources --source $s --out "$WORK/sources/$s" --params "$P" > "$WORK/sources_$s.log" 2>&1 \
    || { tail -20 "$WORK/sources_$s.log"; exit 6; }
done
$PY -m stages.split --sources "$WORK/sources" --out "$WORK/split" --params "$P" > "$WORK/split.log" 2>&1 \
  || { tail -20 "$WORK/split.log"; exit 6; }
$PY -m stages.preprocess --split-dir "$WORK/split" --out "$WORK/cache" --params "$P" > "$WORK/preprocess.log" 2>&1 \
  || { tail -20 "$WORK/preprocess.log"; exit 6; }
el "cache built: $(grep -o 'cache done.*' "$WORK/preprocess.log")"
for run in train train_workers; do
  params=$P; [ $run = train_workers ] && params=$WORK/params_workers.yaml
  $PY -m stages.train --cache-dir "$WORK/cache" --save-dir "$WORK/models_$run" --live-dir "$WORK/live_$run" \
    --params "$params" > "$OUT/$run.log" 2>&1 || { tail -30 "$OUT/$run.log"; exit 7; }
  grep "images/s" "$OUT/$run.log" | tail -"$EPOCHS"
  el "$run stage done"
done
$PY bench/model_only.py --params "$P" --steps "${STEPS:-40}" --warmup 10 > "$OUT/model_only.json" 2> "$WORK/model_only.log" \
  || { tail -20 "$WORK/model_only.log"; exit 8; }
cat "$OUT/model_only.json"
$PY - "$OUT" <<'PY'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
model_only = json.loads((out / "model_only.json").read_text())


def rates(log: str) -> tuple[list[float], float]:
    per_epoch = [float(r) for r in re.findall(r"train ([0-9.]+) images/s", (out / log).read_text())]
    later = sorted(per_epoch[1:] or per_epoch)  # the first epoch also pays for cuDNN autotuning and warm-up
    return per_epoch, later[len(later) // 2]


per_epoch, stage = rates("train.log")
per_epoch_workers, workers = rates("train_workers.log")
result = {"train_stage_images_per_s_per_epoch": per_epoch, "train_stage_images_per_s": stage,
          "model_only_images_per_s": model_only["images_per_s"],
          "ratio": round(stage / model_only["images_per_s"], 3), "target_ratio": 0.8,
          "augment_on_workers": {"train_stage_images_per_s_per_epoch": per_epoch_workers,
                                 "train_stage_images_per_s": workers,
                                 "ratio": round(workers / model_only["images_per_s"], 3)}, **{
              k: model_only[k] for k in ("device", "model", "image_size", "batch_size", "autocast")}}
(out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PY
el "end"
