"""Tests for experiments.data: bundled loaders, the CIFAR binary reader, augmentation and batching."""

import os
import random

import jax
import jax.numpy as jnp
import mnist1d.data
import mnist1d.utils
import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from experiments import data
from experiments.data import _sources


def _rng_states():
  return np.random.get_state(), random.getstate()


def _assert_rng_states_equal(before, after):
  (np_before, py_before), (np_after, py_after) = before, after
  assert np_before[0] == np_after[0]
  np.testing.assert_array_equal(np_before[1], np_after[1])
  assert np_before[2:] == np_after[2:]
  assert py_before == py_after


# ---------------------------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_and_per_channel_train_standardisation():
  ds = data.load("digits")
  assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
  assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
  assert ds.num_classes == 10 and ds.name == "digits"
  # Raw digits pixels are the integers 0..16 and both extremes occur, so the single affine map
  # raw = x * sigma + mu can be recovered from the loaded values alone.
  union = np.concatenate([ds.x_train.ravel(), ds.x_test.ravel()]).astype(np.float64)
  sigma = 16.0 / (union.max() - union.min())
  mu = -union.min() * sigma
  raw_train = ds.x_train.astype(np.float64) * sigma + mu
  raw_test = ds.x_test.astype(np.float64) * sigma + mu
  np.testing.assert_allclose(raw_train, np.round(raw_train), atol=1e-4)
  np.testing.assert_allclose(raw_test, np.round(raw_test), atol=1e-4)
  # The map is the train split's per-channel standardisation (test statistics unused) ...
  np.testing.assert_allclose(raw_train.mean(), mu, rtol=1e-5)
  np.testing.assert_allclose(raw_train.std(), sigma, rtol=1e-5)
  assert abs(raw_test.mean() - mu) > 1e-4
  # ... and the recovered images are exactly scikit-learn's, with labels attached.
  reference = sk_datasets.load_digits()
  ref_rows = np.concatenate([reference.images.reshape(-1, 64), reference.target[:, None]], axis=1)
  ours = np.concatenate([np.round(np.concatenate([raw_train, raw_test])).reshape(-1, 64),
                         np.concatenate([ds.y_train, ds.y_test])[:, None]], axis=1)
  np.testing.assert_array_equal(ours[np.lexsort(ours.T)], ref_rows[np.lexsort(ref_rows.T)])


def test_digits_flatten_and_sizes():
  flat = data.load("digits", flatten=True, n_train=300, n_test=50)
  images = data.load("digits", n_train=300, n_test=50)
  assert flat.x_train.shape == (300, 64) and flat.x_test.shape == (50, 64)
  np.testing.assert_array_equal(flat.x_train, images.x_train.reshape(300, 64))
  np.testing.assert_array_equal(flat.y_test, images.y_test)
  with pytest.raises(ValueError, match="n_train"):
    data.load("digits", n_train=5000)
  with pytest.raises(ValueError, match="n_test"):
    data.load("digits", n_test=0)


@pytest.mark.parametrize("fraction", [0.1, 0.37])
def test_label_noise_fraction_exact_seeded_and_global_rng_untouched(fraction):
  clean = data.load("digits")
  np.random.seed(123)
  random.seed(321)
  before = _rng_states()
  noisy = data.load("digits", label_noise=fraction, seed=7)
  _assert_rng_states_equal(before, _rng_states())
  changed = noisy.y_train != clean.y_train
  assert changed.sum() == round(fraction * len(clean.y_train))
  np.testing.assert_array_equal(noisy.y_test, clean.y_test)  # test labels stay clean
  np.testing.assert_array_equal(noisy.x_train, clean.x_train)
  assert noisy.y_train.min() >= 0 and noisy.y_train.max() < 10
  again = data.load("digits", label_noise=fraction, seed=7)
  np.testing.assert_array_equal(again.y_train, noisy.y_train)
  other = data.load("digits", label_noise=fraction, seed=8)
  assert not np.array_equal(other.y_train, noisy.y_train)


def test_full_label_noise_changes_every_label_to_every_other_class():
  clean = data.load("digits")
  noisy = data.load("digits", label_noise=1.0, seed=0)
  assert np.all(noisy.y_train != clean.y_train)
  # The replacement is uniform over the 9 other classes: every (old, new) pair with old != new occurs.
  pairs = set(zip(clean.y_train.tolist(), noisy.y_train.tolist()))
  assert len(pairs) == 90


def test_load_rejects_bad_arguments():
  with pytest.raises(ValueError, match="name must be one of"):
    data.load("mnist")
  with pytest.raises(ValueError, match="label_noise"):
    data.load("digits", label_noise=1.5)


# ---------------------------------------------------------------------------------------------------------------
# mnist1d


@pytest.fixture
def small_mnist1d(monkeypatch):
  """mnist1d's real generator with 600 instead of 5000 samples (a tenth of the time); returns the split sizes."""
  real_args = mnist1d.data.get_dataset_args

  def small_args(as_dict=False):
    args = real_args(as_dict=True)
    args["num_samples"] = 600
    return args if as_dict else mnist1d.utils.ObjectView(args)

  monkeypatch.setattr(mnist1d.data, "get_dataset_args", small_args)
  return 480, 120


def test_mnist1d_generation_matches_package_and_leaves_global_rngs_alone(small_mnist1d, tmp_path):
  np.random.seed(5)
  random.seed(6)
  before = _rng_states()
  ds = data.load("mnist1d", cache_dir=str(tmp_path))
  _assert_rng_states_equal(before, _rng_states())
  assert ds.x_train.shape == (small_mnist1d[0], 40, 1) and ds.x_test.shape == (small_mnist1d[1], 40, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.x_train.std(), 1.0, rtol=1e-5)
  reference = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
  np.testing.assert_array_equal(ds.y_train, reference["y"])
  np.testing.assert_array_equal(ds.y_test, reference["y_test"])
  # Standardisation is one affine map fitted on train, so correlations with the reference are exactly 1.
  ref_x = reference["x"].ravel()
  np.testing.assert_allclose(np.corrcoef(ds.x_train.ravel(), ref_x)[0, 1], 1.0, atol=1e-6)
  slope = np.std(ds.x_train) / np.std(ref_x)
  np.testing.assert_allclose((ds.x_test.ravel() - ds.x_train.mean()) / slope + ref_x.mean(),
                             reference["x_test"].ravel(), atol=1e-4)
  assert [f for f in os.listdir(tmp_path) if f.endswith(".npz")]


def test_mnist1d_second_load_reads_cache(small_mnist1d, tmp_path, monkeypatch):
  first = data.load("mnist1d", cache_dir=str(tmp_path))

  def fail(*args, **kwargs):
    raise AssertionError("mnist1d generator called although the arrays are cached")

  monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
  second = data.load("mnist1d", cache_dir=str(tmp_path))
  np.testing.assert_array_equal(second.x_train, first.x_train)
  np.testing.assert_array_equal(second.y_test, first.y_test)
  # Smaller sizes are prefixes of the standard splits, also read from the cache.
  small = data.load("mnist1d", cache_dir=str(tmp_path), n_train=200, n_test=100, flatten=True)
  assert small.x_train.shape == (200, 40) and small.x_test.shape == (100, 40)
  np.testing.assert_array_equal(small.y_train, first.y_train[:200])
  np.testing.assert_array_equal(small.y_test, first.y_test[:100])


@pytest.mark.slow  # the standard 5000-sample generation; the small_mnist1d tests cover the same code path
def test_mnist1d_default_sizes(tmp_path):
  ds = data.load("mnist1d", cache_dir=str(tmp_path))
  assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
  assert set(np.unique(ds.y_train)) == set(range(10))


def test_mnist1d_larger_sizes_regenerate_with_more_samples(tmp_path, monkeypatch):
  calls = []

  def fake_make_dataset(args):
    calls.append(dict(vars(args)))
    np.random.seed(args.seed)  # like mnist1d's own set_seed, which must not leak
    n = args.num_samples
    split = int(n * args.train_split)
    xs, ys = np.random.randn(n, args.final_seq_length), np.arange(n) % 10
    return {"x": xs[:split], "x_test": xs[split:], "y": ys[:split], "y_test": ys[split:]}

  monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
  np.random.seed(11)
  before = _rng_states()
  ds = data.load("mnist1d", cache_dir=str(tmp_path), n_train=4500, n_test=1003)
  _assert_rng_states_equal(before, _rng_states())
  assert len(calls) == 1
  assert calls[0]["num_samples"] == 5510  # rounded up to whole classes
  defaults = mnist1d.data.get_dataset_args(as_dict=True)
  for key in ("template_len", "padding", "corr_noise_scale", "iid_noise_scale", "seed", "final_seq_length"):
    assert calls[0][key] == defaults[key]
  assert ds.x_train.shape == (4500, 40, 1) and ds.x_test.shape == (1003, 40, 1)
  np.testing.assert_array_equal(ds.y_train, np.arange(4500) % 10)
  np.testing.assert_array_equal(ds.y_test, np.arange(4500, 5503) % 10)
  # A different size is a different cache entry; the same size hits the cache.
  data.load("mnist1d", cache_dir=str(tmp_path), n_train=4500, n_test=1003)
  assert len(calls) == 1
  data.load("mnist1d", cache_dir=str(tmp_path), n_train=6000)
  assert len(calls) == 2 and calls[1]["num_samples"] == 7000
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 2


def test_mnist1d_cache_dir_defaults_to_env_var(tmp_path, monkeypatch):
  monkeypatch.setenv("WD_OPTAX_CACHE", str(tmp_path))
  monkeypatch.setattr(mnist1d.data, "make_dataset", lambda args: {
      "x": np.zeros((4000, 40)), "x_test": np.zeros((1000, 40)),
      "y": np.zeros(4000, int), "y_test": np.zeros(1000, int)})
  data.load("mnist1d", n_train=10, n_test=10)
  assert [f for f in os.listdir(tmp_path) if f.startswith("mnist1d_") and f.endswith(".npz")]


# ---------------------------------------------------------------------------------------------------------------
# CIFAR binary reader


def _write_cifar(directory, files, label_bytes, num_classes, rng):
  """Writes files in the official binary layout; returns {file: (uint8 HWC images, fine labels)}."""
  os.makedirs(directory, exist_ok=True)
  written = {}
  for name, count in files.items():
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    fine = rng.integers(0, num_classes, size=count).astype(np.uint8)
    with open(os.path.join(directory, name), "wb") as f:
      for image, label in zip(images, fine):
        header = bytes([label]) if label_bytes == 1 else bytes([(label + 7) % 20, label])  # coarse, fine
        f.write(header + image.transpose(2, 0, 1).tobytes())  # channel-major: all R, then G, then B
    written[name] = (images, fine)
  return written


def _expect_records(monkeypatch, name, files):
  """Lets the tiny fixture files stand for the official ones: their record counts become the expected counts.

  (The official files hold 10,000 records each, CIFAR-100's train file 50,000; the full-size checks below use
  sparse files of the real size.)"""
  for filename, count in files.items():
    monkeypatch.setitem(_sources._CIFAR_SPECS[name]["records"], filename, count)


def _cifar10_files():
  return {**{f"data_batch_{i}.bin": i + 1 for i in range(1, 6)}, "test_batch.bin": 4}


def _unstandardise_and_check(ds, train_images, test_images):
  raw = train_images.astype(np.float64) / 255.0
  mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
  for x, images in ((ds.x_train, train_images), (ds.x_test, test_images)):
    recovered = x.astype(np.float64) * std + mean
    np.testing.assert_allclose(recovered * 255.0, images, atol=1e-3)
    np.testing.assert_array_equal(np.round(recovered * 255.0).astype(np.uint8), images)


@pytest.mark.parametrize("subdir", [False, True])
def test_cifar10_binary_round_trip(tmp_path, subdir, monkeypatch):
  rng = np.random.default_rng(0)
  directory = tmp_path / "cifar-10-batches-bin" if subdir else tmp_path
  _expect_records(monkeypatch, "cifar10", _cifar10_files())
  written = _write_cifar(str(directory), _cifar10_files(), 1, 10, rng)
  ds = data.load("cifar10", data_dir=str(tmp_path))
  train_images = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
  train_labels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
  assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.num_classes == 10
  np.testing.assert_array_equal(ds.y_train, train_labels)
  np.testing.assert_array_equal(ds.y_test, written["test_batch.bin"][1])
  _unstandardise_and_check(ds, train_images, written["test_batch.bin"][0])
  np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, rtol=1e-4)


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  _expect_records(monkeypatch, "cifar100", {"train.bin": 12, "test.bin": 5})
  written = _write_cifar(str(tmp_path / "cifar-100-binary"), {"train.bin": 12, "test.bin": 5}, 2, 100, rng)
  ds = data.load("cifar100", data_dir=str(tmp_path), n_train=10)
  assert ds.num_classes == 100 and ds.x_train.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(ds.y_train, written["train.bin"][1][:10])
  np.testing.assert_array_equal(ds.y_test, written["test.bin"][1])
  _unstandardise_and_check(ds, written["train.bin"][0][:10], written["test.bin"][0])


def test_cifar_errors_name_path_and_expectation(tmp_path, monkeypatch):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match="nowhere.*data_batch_1.bin"):
    data.load("cifar10", data_dir=str(missing))
  with pytest.raises(ValueError, match="data_dir"):
    data.load("cifar100")
  files = _cifar10_files()
  _expect_records(monkeypatch, "cifar10", files)
  _write_cifar(str(tmp_path), files, 1, 10, np.random.default_rng(2))
  os.remove(tmp_path / "data_batch_3.bin")
  with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
    data.load("cifar10", data_dir=str(tmp_path))
  _write_cifar(str(tmp_path), {"data_batch_3.bin": 2}, 1, 10, np.random.default_rng(3))
  _expect_records(monkeypatch, "cifar10", {"data_batch_3.bin": 2})
  with open(tmp_path / "test_batch.bin", "ab") as f:
    f.write(b"\x00")  # one stray byte
  with pytest.raises(ValueError, match=r"test_batch\.bin.*3073"):
    data.load("cifar10", data_dir=str(tmp_path))
  # CIFAR-100 records (3074 bytes) are not CIFAR-10 records.
  wrong = tmp_path / "c100"
  _write_cifar(str(wrong), {"train.bin": 3, "test.bin": 3}, 1, 10, np.random.default_rng(4))
  _expect_records(monkeypatch, "cifar100", {"train.bin": 3, "test.bin": 3})
  with pytest.raises(ValueError, match=r"train\.bin.*3074"):
    data.load("cifar100", data_dir=str(wrong))


# Full-size CIFAR files, written sparse (f.truncate: no 30 MB of writes each), checked without reading pixels.
CIFAR_RECORD = {"cifar10": 3073, "cifar100": 3074}
OFFICIAL_RECORDS = {
    "cifar10": {**{f"data_batch_{i}.bin": 10000 for i in range(1, 6)}, "test_batch.bin": 10000},
    "cifar100": {"train.bin": 50000, "test.bin": 10000},
}


def write_sparse_cifar(directory, name, records=None, labels=()):
  """Official-size files of ``name`` (all-zero records, so label 0) in ``directory``.

  ``records`` overrides the record count of some files; ``labels`` is a list of (file, record, byte, value)
  label bytes to set (byte 0: the label of CIFAR-10, the coarse label of CIFAR-100; byte 1: CIFAR-100's fine
  label)."""
  os.makedirs(directory, exist_ok=True)
  counts = dict(OFFICIAL_RECORDS[name], **(records or {}))
  for filename, count in counts.items():
    with open(os.path.join(directory, filename), "wb") as f:
      f.truncate(count * CIFAR_RECORD[name])
  for filename, record, byte, value in labels:
    with open(os.path.join(directory, filename), "r+b") as f:
      f.seek(record * CIFAR_RECORD[name] + byte)
      f.write(bytes([value]))
  return str(directory)


def test_cifar_official_record_counts_are_the_format(tmp_path):
  # Independent reference: the CIFAR pages' numbers (5 x 10,000 + 10,000; 50,000 + 10,000) and record sizes.
  for name, (train, test) in {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}.items():
    spec = _sources._CIFAR_SPECS[name]
    assert sum(spec["records"][f] for f in spec["train"]) == train
    assert sum(spec["records"][f] for f in spec["test"]) == test
    assert spec["label_bytes"] + _sources.CIFAR_PIXELS == CIFAR_RECORD[name]
  assert data.check("cifar10", data_dir=write_sparse_cifar(tmp_path / "c10", "cifar10")) == (50000, 10000)
  assert data.check("cifar100", data_dir=write_sparse_cifar(tmp_path / "c100", "cifar100"),
                    n_train=5000) == (5000, 10000)


@pytest.mark.parametrize("name,records,pattern", [
    ("cifar10", {"data_batch_2.bin": 9999}, r"data_batch_2\.bin' holds 9999 records; expected 10000"),
    ("cifar10", {"test_batch.bin": 20000}, r"test_batch\.bin' holds 20000 records; expected 10000"),
    ("cifar100", {"train.bin": 10000}, r"train\.bin' holds 10000 records; expected 50000"),
    ("cifar100", {"test.bin": 1}, r"test\.bin' holds 1 records; expected 10000"),
])
def test_a_file_cut_on_a_record_boundary_is_refused(tmp_path, name, records, pattern):
  directory = write_sparse_cifar(tmp_path, name, records)
  with pytest.raises(ValueError, match=pattern):
    data.check(name, data_dir=directory)
  with pytest.raises(ValueError, match=pattern):
    data.load(name, data_dir=directory)


def test_cifar_label_range_is_checked_on_every_record_and_on_the_fine_label(tmp_path):
  # The last record of the last train file: the label check reads every record's label byte.
  directory = write_sparse_cifar(tmp_path / "a", "cifar10", labels=[("data_batch_5.bin", 9999, 0, 10)])
  with pytest.raises(ValueError, match=r"data_batch_5\.bin' has label 10 at record 9999; expected labels in "
                                       r"\[0, 10\)"):
    data.check("cifar10", data_dir=directory)
  # CIFAR-100: coarse labels (byte 0) are not class labels here; the fine label (byte 1) is.
  directory = write_sparse_cifar(tmp_path / "b", "cifar100", labels=[("test.bin", 3, 0, 150), ("test.bin", 5, 1, 99)])
  assert data.check("cifar100", data_dir=directory) == (50000, 10000)
  directory = write_sparse_cifar(tmp_path / "c", "cifar100", labels=[("test.bin", 7, 1, 100)])
  with pytest.raises(ValueError, match=r"test\.bin' has label 100 at record 7"):
    data.check("cifar100", data_dir=directory)


def test_check_names_config_keys_with_a_prefix_and_reads_no_pixels(tmp_path, monkeypatch):
  monkeypatch.setattr(np, "fromfile", lambda *a, **k: pytest.fail("check read the pixels"))
  with pytest.raises(FileNotFoundError, match=r"^data\.data_dir: CIFAR-10 directory .*nowhere"):
    data.check("cifar10", data_dir=str(tmp_path / "nowhere"), prefix="data.")
  with pytest.raises(ValueError, match=r"^data\.n_train=60000 exceeds the 50000 examples"):
    data.check("cifar10", data_dir=write_sparse_cifar(tmp_path, "cifar10"), n_train=60000, prefix="data.")
  with pytest.raises(ValueError, match=r"^data\.label_noise must be a fraction in \[0, 1\], got 2"):
    data.check("digits", label_noise=2, prefix="data.")
  with pytest.raises(ValueError, match=r"^data\.name must be one of"):
    data.check("imagenet", prefix="data.")
  assert data.check("digits") == (1437, 360) and data.check("mnist1d", n_test=7) == (4000, 7)


# ---------------------------------------------------------------------------------------------------------------
# augmentation and batching


def test_augment_flip_only_matches_numpy_flip_per_example():
  images = np.random.default_rng(0).normal(size=(32, 6, 5, 3)).astype(np.float32)
  out = np.asarray(data.augment_crop_flip(jax.random.key(0), jnp.asarray(images), padding=0))
  assert out.shape == images.shape and out.dtype == np.float32
  flipped = np.array([np.array_equal(o, np.flip(x, axis=1)) for o, x in zip(out, images)])
  kept = np.array([np.array_equal(o, x) for o, x in zip(out, images)])
  assert np.all(flipped | kept)
  assert 0 < flipped.sum() < len(images)  # drawn per example


def test_augment_crop_is_a_window_of_the_zero_padded_image():
  padding = 2
  images = np.random.default_rng(1).normal(size=(16, 5, 5, 2)).astype(np.float32)
  out = np.asarray(jax.jit(lambda k, x: data.augment_crop_flip(k, x, padding=padding))(
      jax.random.key(3), jnp.asarray(images)))
  offsets = set()
  for o, x in zip(out, images):
    padded = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    matches = [(i, j) for i in range(2 * padding + 1) for j in range(2 * padding + 1) for cand in (o, o[:, ::-1])
               if np.array_equal(padded[i:i + 5, j:j + 5], cand)]
    assert matches, "augmented image is no (flipped) window of the padded image"
    offsets.add(matches[0])
  assert len(offsets) > 3  # offsets differ between examples
  again = np.asarray(data.augment_crop_flip(jax.random.key(3), jnp.asarray(images), padding=padding))
  np.testing.assert_array_equal(again, out)
  with pytest.raises(ValueError, match="images"):
    data.augment_crop_flip(jax.random.key(0), jnp.zeros((5, 5, 2)))


def test_batches_cover_an_epoch_with_explicit_seed():
  x = np.arange(23, dtype=np.float32)[:, None]
  y = np.arange(23, dtype=np.int32)
  np.random.seed(0)
  before = _rng_states()
  full = list(data.batches(x, y, 5, key_or_seed=3))
  _assert_rng_states_equal(before, _rng_states())
  assert [len(b[0]) for b in full] == [5, 5, 5, 5]
  seen = np.concatenate([b[1] for b in full])
  assert len(set(seen.tolist())) == 20
  for xb, yb in full:
    np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay paired
  partial = list(data.batches(x, y, 5, key_or_seed=3, drop_remainder=False))
  assert sorted(np.concatenate([b[1] for b in partial]).tolist()) == list(range(23))
  again = np.concatenate([b[1] for b in data.batches(x, y, 5, key_or_seed=3)])
  np.testing.assert_array_equal(again, seen)
  other = np.concatenate([b[1] for b in data.batches(x, y, 5, key_or_seed=4)])
  assert not np.array_equal(other, seen)
  from_key = [b[1] for b in data.batches(x, y, 5, key_or_seed=jax.random.key(3))]
  assert len(from_key) == 4
  with pytest.raises(ValueError, match="batch_size"):
    data.batches(x, y, 30, key_or_seed=0)
  with pytest.raises(ValueError, match="same number"):
    data.batches(x, y[:5], 2, key_or_seed=0)
  with pytest.raises(ValueError, match="key_or_seed"):
    data.batches(x, y, 2, key_or_seed="seed")
