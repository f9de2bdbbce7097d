#!/bin/bash
# Prepare, on this machine, what bench/gpu_session.sh needs on a GPU machine that has no network and
# receives at most 64 MiB per call (the device tool's `carry`):
#   .whl/      Python 3.12 wheels of what the device image lacks (albumentations, dvclive and their needs)
#   .gpudata/  a patient-level sample of both real sources: all 718 eyepacs-dev photos would take 30 MB,
#              so 120 EyePACS patients (~10 MB) and 650 ODIR patients (~38 MB) travel
# Both folders are git-ignored. Then, with a device at hand (the `run` tool):
#   run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpudata"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
rm -rf .whl .gpudata
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2 pydantic==2.14.4 \
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 dvclive==3.49.1 dvc==3.67.1 \
  dvc-render==1.0.2 dvc-studio-client==0.23.0 funcy==2.1 ruamel.yaml==0.19.1 flatten-dict==0.5.0 \
  voluptuous==0.16.0 wcwidth==0.9.4
$PY - "$DATA" <<'PY'
import shutil, sys
from pathlib import Path

import pandas as pd

data, out = Path(sys.argv[1]), Path(".gpudata")
for source, n_patients in (("eyepacs", 120), ("odir", 650)):
    folder = data / f"{source}-dev"
    table = pd.read_csv(folder / "labels.csv")
    patient = table["patient_id"] if "patient_id" in table else table["image"].str.split("_").str[0]
    chosen = pd.Series(patient.unique()).sample(n_patients, random_state=0)
    sample = table[patient.isin(chosen)]
    (out / source / "images").mkdir(parents=True)
    files = {path.stem: path for path in (folder / "images").iterdir()}
    for name in sample["image"]:
        shutil.copy2(files[name], out / source / "images")
    sample.to_csv(out / source / "labels.csv", index=False)
    print(f"{source}: {len(sample)} photos of {n_patients} patients")
PY
du -sh .whl .gpudata
