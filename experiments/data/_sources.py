"""Raw readers for the bundled and local datasets: arrays as the source ships them, before standardisation.

Each reader returns ``(x_train, y_train, x_test, y_test, num_classes)`` with float32 inputs in their natural
layout and int32 labels. Subsetting, label noise and standardisation happen in :func:`experiments.data.load`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import random
import tempfile

import numpy as np

RawSplits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]

MNIST1D_TRAIN = 4000
MNIST1D_TEST = 1000
DIGITS_TOTAL = 1797  # scikit-learn's digits.
DIGITS_TEST = 360  # 20% of them.
# The digits train/test split is fixed (independent of ``load``'s seed) so that every run is scored on the same
# held-out images; ``seed`` only drives label noise.
_DIGITS_SPLIT_SEED = 0


def default_cache_dir() -> str:
  """``$WD_OPTAX_CACHE`` if set, else ``~/.cache/wd_optax``."""
  return os.environ.get("WD_OPTAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wd_optax")


def _mnist1d_generation_args(n_train: int, n_test: int) -> tuple[dict, int]:
  """mnist1d generator arguments for at least ``n_train``/``n_test`` examples, and the train/test split index.

  Up to the standard 4000/1000 the standard dataset is generated and subsetted, so the test set stays the one
  everyone reports on. Beyond that, ``num_samples`` grows (rounded up to a multiple of the 10 classes because
  mnist1d makes ``num_samples // 10`` examples per class) and the split is taken at ``n_train``.
  """
  from mnist1d import data as mnist1d_data  # pylint: disable=g-import-not-at-top

  args = mnist1d_data.get_dataset_args(as_dict=True)
  args.pop("url", None)  # Where the reference pickle lives; it does not affect generation.
  if n_train <= MNIST1D_TRAIN and n_test <= MNIST1D_TEST:
    return args, int(args["num_samples"] * args["train_split"])
  num_samples = 10 * math.ceil((n_train + n_test) / 10)
  args["num_samples"] = num_samples
  args["train_split"] = n_train / num_samples
  return args, n_train


def _generate_mnist1d(args: dict) -> tuple[np.ndarray, np.ndarray]:
  """Runs mnist1d's generator without leaking its reseeding of the global RNGs to the caller."""
  from mnist1d import data as mnist1d_data  # pylint: disable=g-import-not-at-top
  from mnist1d import utils as mnist1d_utils  # pylint: disable=g-import-not-at-top

  # make_dataset calls np.random.seed / random.seed (the only seeding mnist1d offers), so both global states are
  # saved and restored: a caller's own np.random stream must not silently restart at seed 42.
  numpy_state = np.random.get_state()
  python_state = random.getstate()
  try:
    generated = mnist1d_data.make_dataset(mnist1d_utils.ObjectView(dict(args)))
  finally:
    np.random.set_state(numpy_state)
    random.setstate(python_state)
  x = np.concatenate([generated["x"], generated["x_test"]]).astype(np.float32)
  y = np.concatenate([generated["y"], generated["y_test"]]).astype(np.int32)
  return x, y


def read_mnist1d(n_train: int, n_test: int, cache_dir: str | None) -> RawSplits:
  """mnist1d sequences of length 40 as ``(N, 40, 1)``; generated once per argument set, then read from an npz.

  The cache file name hashes every generation argument plus the mnist1d version, so a changed size or a new
  generator never reads stale arrays.
  """
  args, split = _mnist1d_generation_args(n_train, n_test)
  try:
    version = importlib.metadata.version("mnist1d")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  key_text = json.dumps({"args": args, "mnist1d": version}, sort_keys=True)
  digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  path = os.path.join(cache_dir, f"mnist1d_{digest}.npz")
  if os.path.exists(path):
    with np.load(path) as cached:
      x, y = cached["x"], cached["y"]
  else:
    x, y = _generate_mnist1d(args)
    os.makedirs(cache_dir, exist_ok=True)
    # Write-then-rename so a concurrent reader never sees a half-written file.
    fd, tmp_path = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, x=x, y=y, key=np.array(key_text))
      os.replace(tmp_path, path)
    except BaseException:
      if os.path.exists(tmp_path):
        os.remove(tmp_path)
      raise
  x = x[..., None]
  return (x[:split][:n_train], y[:split][:n_train], x[split:][:n_test], y[split:][:n_test], 10)


def read_digits() -> RawSplits:
  """scikit-learn's 8x8 digits (pixel values 0..16) as ``(N, 8, 8, 1)`` with a fixed 1437/360 split."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  bunch = datasets.load_digits()
  images = bunch.images.astype(np.float32)[..., None]
  labels = bunch.target.astype(np.int32)
  order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
  test_idx, train_idx = order[:DIGITS_TEST], order[DIGITS_TEST:]
  return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], 10


_CIFAR_SPECS = {
    "cifar10": dict(
        title="CIFAR-10",
        subdir="cifar-10-batches-bin",
        train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test=("test_batch.bin",),
        label_bytes=1,
        num_classes=10,
        # Records per official file (3073-byte records: 1 label byte + 3072 pixels).
        records={**{f"data_batch_{i}.bin": 10000 for i in range(1, 6)}, "test_batch.bin": 10000},
        archive="cifar-10-binary.tar.gz",
    ),
    "cifar100": dict(
        title="CIFAR-100",
        subdir="cifar-100-binary",
        train=("train.bin",),
        test=("test.bin",),
        label_bytes=2,  # coarse label, then fine label.
        num_classes=100,
        # Records per official file (3074-byte records: coarse and fine label bytes + 3072 pixels).
        records={"train.bin": 50000, "test.bin": 10000},
        archive="cifar-100-binary.tar.gz",
    ),
}
CIFAR_PIXELS = 32 * 32 * 3


def _cifar_dir(name: str, data_dir: str | None, field: str = "data_dir") -> str:
  spec = _CIFAR_SPECS[name]
  files = spec["train"] + spec["test"]
  expected = (f"the official {spec['title']} binary files ({spec['archive']} extracted: {', '.join(files)}), "
              f"directly in the directory or under {spec['subdir']}/")
  if data_dir is None:
    raise ValueError(f"{field} is needed for {name!r}: a local directory holding {expected}.")
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"{field}: {spec['title']} directory {data_dir!r} is not an existing directory; "
                            f"expected {expected}.")
  candidates = [data_dir, os.path.join(data_dir, spec["subdir"])]
  for candidate in candidates:
    if all(os.path.isfile(os.path.join(candidate, f)) for f in files):
      return candidate
  missing = [os.path.join(c, f) for c in candidates if os.path.isdir(c) for f in files
             if not os.path.isfile(os.path.join(c, f))]
  raise FileNotFoundError(
      f"{field}: {spec['title']} directory {data_dir!r} lacks required files; expected {expected}. Missing: "
      f"{', '.join(missing)}. (The Python 'pickle' version of the dataset is not read; use the binary version.)")


def _cifar_records(name: str, filename: str) -> int:
  """The number of records the official ``filename`` of ``name`` holds (10,000 per CIFAR-10 batch)."""
  return _CIFAR_SPECS[name]["records"][filename]


def _check_cifar_file(name: str, path: str, field: str) -> np.ndarray:
  """Checks one official file's size, record count and labels, reading only the label bytes; returns the labels."""
  spec = _CIFAR_SPECS[name]
  label_bytes, num_classes = spec["label_bytes"], spec["num_classes"]
  record = label_bytes + CIFAR_PIXELS
  official = _cifar_records(name, os.path.basename(path))
  size = os.path.getsize(path)
  layout = (f"{label_bytes} label byte(s) + {CIFAR_PIXELS} pixel bytes per record; the official file holds "
            f"{official} records = {official * record} bytes")
  if size == 0 or size % record:
    raise ValueError(f"{field}: {spec['title']} file {path!r} has {size} bytes; expected a positive multiple of "
                     f"{record} bytes ({layout}). Is it the right dataset's file?")
  if size // record != official:
    raise ValueError(f"{field}: {spec['title']} file {path!r} holds {size // record} records; expected "
                     f"{official} ({layout}). Is the file truncated?")
  raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, record)
  labels = np.array(raw[:, label_bytes - 1], dtype=np.int32)  # CIFAR-100: the fine label is the second byte.
  del raw
  if labels.max() >= num_classes:
    bad = int(np.argmax(labels >= num_classes))
    raise ValueError(f"{field}: {spec['title']} file {path!r} has label {labels[bad]} at record {bad}; expected "
                     f"labels in [0, {num_classes}). Is it the right dataset's file?")
  return labels


def check_cifar(name: str, data_dir: str | None, field: str = "data_dir") -> tuple[int, int]:
  """Checks a CIFAR directory without reading the pixels; returns the (train, test) example counts.

  Every official file must exist, be a whole number of records of the format's size, hold the official
  record count and carry labels in range. Errors name ``field`` (the argument or config key of the directory).
  """
  spec = _CIFAR_SPECS[name]
  directory = _cifar_dir(name, data_dir, field)
  counts = []
  for files in (spec["train"], spec["test"]):
    counts.append(sum(len(_check_cifar_file(name, os.path.join(directory, f), field)) for f in files))
  return counts[0], counts[1]


def _read_cifar_file(name: str, path: str, field: str) -> tuple[np.ndarray, np.ndarray]:
  labels = _check_cifar_file(name, path, field)
  label_bytes = _CIFAR_SPECS[name]["label_bytes"]
  raw = np.fromfile(path, dtype=np.uint8).reshape(len(labels), label_bytes + CIFAR_PIXELS)
  # Each record stores the image channel-major (1024 red, 1024 green, 1024 blue bytes, rows in order).
  images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels


def read_cifar(name: str, data_dir: str | None, field: str = "data_dir") -> RawSplits:
  """CIFAR-10/100 from the official binary files, as ``(N, 32, 32, 3)`` float32 pixels scaled to [0, 1]."""
  spec = _CIFAR_SPECS[name]
  directory = _cifar_dir(name, data_dir, field)

  def read_split(files):
    parts = [_read_cifar_file(name, os.path.join(directory, f), field) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images.astype(np.float32) / np.float32(255.0), labels

  x_train, y_train = read_split(spec["train"])
  x_test, y_test = read_split(spec["test"])
  return x_train, y_train, x_test, y_test, spec["num_classes"]


# Modular arithmetic ``a ∘ b mod p`` as token sequences ``[a, op, b, =]`` (Power et al. 2022): the numbers are
# tokens 0..p-1, the operator token is p and ``=`` is p + 1. The label is the answer, a class in 0..p-1.
MODULUS = 97
MODULAR_OPS = {"mod_add": lambda a, b, p: (a + b) % p, "mod_sub": lambda a, b, p: (a - b) % p}
MODULAR_SEQ_LEN = 4
MODULAR_TOTAL = MODULUS * MODULUS
MODULAR_TRAIN = MODULAR_TOTAL // 2  # the default train fraction, 50%, as in Power et al.'s Figure 1 sweeps


def read_modular(name: str, seed: int) -> RawSplits:
  """Every pair ``(a, b)`` of ``Z_p`` once, in an order drawn from ``np.random.default_rng(seed)``.

  Returns the whole table as the "train" split (``p²`` examples) and an empty test split: the train/test
  cut is made by :func:`experiments.data.load`, so any prefix is the train set and the rest the test set, with
  no pair in both.
  """
  p = MODULUS
  a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
  order = np.random.default_rng(seed).permutation(p * p)
  a, b = a[order], b[order]
  tokens = np.stack([a, np.full_like(a, p), b, np.full_like(a, p + 1)], axis=1).astype(np.int32)
  labels = MODULAR_OPS[name](a, b, p).astype(np.int32)
  return tokens, labels, tokens[:0], labels[:0], p
