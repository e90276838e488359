#!/usr/bin/env bash
# Time per epoch of one study (default: early_decay, 5 arms x 1 seed, ResNet-32 widths 64/128/256, BatchNorm
# without affine, batch 128) on one accelerator, for the "Time per epoch" table of docs/accelerators.md.
#
# Writes SYNTHETIC data in the official CIFAR-10 binary format (time per step does not depend on pixel values),
# builds the study's training program exactly as `python -m experiments <study>` does (study config + overrides,
# make_groups, the study's hooks, experiments.train.Program), and times, in one process (one compilation):
#   - chunks of CHUNK optimizer steps (the lax.scan the harness runs between host syncs), repeated for MEASURE_S s;
#   - the full test-set evaluation (warm).
# Time per epoch = 391 * (median seconds per step) + one evaluation: an extrapolation from per-step time, not the
# difference of two whole runs that the docs describe (too little device time for that).
#
# Usage: bash tools/gpu_epoch_timing.sh            (env: STUDY, CHUNK, MEASURE_S, TINY=1 for a CPU smoke test)
# Output: one JSON line (also $OUT/timing.json when OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
STUDY=${STUDY:-early_decay}
CHUNK=${CHUNK:-20}
MEASURE_S=${MEASURE_S:-30}
TINY=${TINY:-0}
OUT_DIR=${OUT:-/tmp/gpu_epoch_timing_out}
mkdir -p "$OUT_DIR"
DATA=/tmp/cifar_synthetic

echo "== nvidia-smi -L"; nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"

# Optional pinned pure-python packages carried as wheels in .whl/ (flax, optax, orbax-checkpoint at the
# versions the test suite uses). Used only if they import and build an nnx model with the machine's jax.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && if PYTHONPATH="/tmp/site:$PYTHONPATH" $PY -c "
import jax, flax, optax
from flax import nnx
from experiments import models
m = nnx.eval_shape(lambda: models.build('resnet20', num_classes=10, norm='batch_noaffine', in_channels=3, rngs=nnx.Rngs(0)))
print('pinned wheels OK: flax', flax.__version__, 'optax', optax.__version__)"; then
      export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
      echo "pinned wheels do not work with this jax; using the machine's own packages"
    fi
fi

echo "== python packages"
$PY - <<'PYEOF' || { echo "FATAL: a package the harness needs is missing (nothing can be installed there)"; exit 3; }
import importlib, sys
missing = []
for name in ("jax", "numpy", "flax", "optax", "orbax.checkpoint", "tqdm", "matplotlib"):
  try:
    mod = importlib.import_module(name)
    print(f"  {name} {getattr(mod, '__version__', '?')}")
  except Exception as e:  # report every missing one, then fail
    missing.append(f"{name} ({e})")
if missing:
  print("MISSING:", "; ".join(missing)); sys.exit(1)
PYEOF

echo "== synthetic CIFAR-10-format data in $DATA"
$PY - "$DATA" "$TINY" <<'PYEOF'
import os, sys
import numpy as np
directory, tiny = sys.argv[1], sys.argv[2] == "1"
os.makedirs(directory, exist_ok=True)
rng = np.random.default_rng(0)
records = 300 if tiny else 10000  # official: 10000 records per file
for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
  data = rng.integers(0, 256, size=(records, 1 + 3072), dtype=np.uint8)
  data[:, 0] = rng.integers(0, 10, size=records, dtype=np.uint8)  # 1 label byte, then 3072 pixel bytes
  data.tofile(os.path.join(directory, name))
print(f"  6 files x {records} records")
PYEOF

echo "== timing $STUDY"
$PY - "$STUDY" "$DATA" "$CHUNK" "$MEASURE_S" "$TINY" "$OUT_DIR/timing.json" <<'PYEOF'
import json, statistics, subprocess, sys, time
t_script = time.time()
study_name, data_dir, chunk, measure_s, tiny, out_path = sys.argv[1:7]
chunk, measure_s, tiny = int(chunk), float(measure_s), tiny == "1"
import jax
print("  jax", jax.__version__, "devices:", jax.devices(), flush=True)
from experiments import checks, studies
from experiments.train.workdir import load_dataset
from experiments.train import Program, make_groups

STEPS_PER_EPOCH = 391  # 50,000 / 128, rounded up
overrides = [
    "data.name=cifar10", f"data.data_dir={data_dir}", "data.n_train=none", "data.n_test=none",
    "data.label_noise=0", "data.augment=true", "model.name=resnet32", "model.norm=batch_noaffine",
    'model.kwargs={"widths": [64, 128, 256]}', "train.batch_size=128", "train.steps=78200",
    "train.log_every=391", "train.eval_every=3910", "train.num_devices=1"]
if tiny:  # CPU smoke test: same code path, toy sizes
  overrides += ['model.kwargs={"widths": [4, 4, 4]}', "train.batch_size=8", "train.eval_batch_size=100"]
study = studies.get(study_name)
config = checks.study_config(study, quick=False, seeds=1, overrides=overrides)
hooks = study.hooks(config) if study.hooks else None
try:
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
  commit = "?"
result = {"study": study_name, "seeds": 1, "arms": [a.name for a in config.arms], "model": "resnet32 widths "
          + str(config.model.kwargs.get("widths")) + " norm " + str(config.model.norm),
          "batch_size": config.train.batch_size, "augment": config.data.augment, "data": "synthetic CIFAR-10-format",
          "device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform, "devices": 1,
          "jax": jax.__version__, "commit": commit, "chunk_steps": chunk}

def dump():
  line = json.dumps(result)
  with open(out_path, "w") as f:
    f.write(line + "\n")
  return line

t0 = time.time()
dataset = load_dataset(config)
result["load_data_s"] = round(time.time() - t0, 3)
groups = make_groups(config)
result["groups"] = [[g.name, len(g.members)] for g in groups]
per_step_all, eval_total = [], 0.0
for group in groups:
  t0 = time.time()
  program = Program(config, group, dataset, hooks=hooks)
  jax.block_until_ready(program.state)
  result[f"{group.name}/build_s"] = round(time.time() - t0, 3)
  t0 = time.time()
  jax.device_get(program.run_chunk(chunk))
  result[f"{group.name}/first_chunk_incl_compile_s"] = round(time.time() - t0, 3)
  dump()
  times = []
  deadline = time.time() + measure_s
  while len(times) < 2 or (time.time() < deadline and len(times) < 40):
    t0 = time.time()
    jax.device_get(program.run_chunk(chunk))
    times.append(time.time() - t0)
    result[f"{group.name}/chunk_s"] = [round(t, 4) for t in times]
    dump()
  t0 = time.time()
  program.evaluate()
  result[f"{group.name}/first_eval_incl_compile_s"] = round(time.time() - t0, 3)
  t0 = time.time()
  program.evaluate()
  eval_s = time.time() - t0
  result[f"{group.name}/eval_s"] = round(eval_s, 4)
  per_step_all.append(statistics.median(times) / chunk)
  eval_total += eval_s
  dump()
per_step = sum(per_step_all)  # groups run one after another
result["step_s_median"] = round(per_step, 6)
result["epoch_train_s"] = round(STEPS_PER_EPOCH * per_step, 3)
result["epoch_with_one_eval_s"] = round(STEPS_PER_EPOCH * per_step + eval_total, 3)
result["script_s"] = round(time.time() - t_script, 1)
print(dump())
PYEOF
