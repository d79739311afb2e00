"""Data loading, batching and device-side augmentation."""

import shutil

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from helpers import write_folder
from l2jax import augment
from l2jax import caches
from l2jax import data
from l2jax import devices
from l2jax.errors import ConfigError, DataError


HOST2 = devices.Host(local_devices=2)  # One process feeding two devices.


def make_split(n, shape=(8, 8, 3)):
  rng = np.random.default_rng(0)
  return data.Split(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                    np.arange(n, dtype=np.int32))


def test_validation_split_is_disjoint_complete_and_fixed():
  train, val = data.split_validation(make_split(100), 0.2, seed=3)
  assert (len(train), len(val)) == (80, 20)
  assert set(train.labels) | set(val.labels) == set(range(100))
  assert not set(train.labels) & set(val.labels)
  _, again = data.split_validation(make_split(100), 0.2, seed=3)
  np.testing.assert_array_equal(val.labels, again.labels)
  _, other = data.split_validation(make_split(100), 0.2, seed=4)
  assert set(val.labels) != set(other.labels)


def test_train_batches_shapes_and_order():
  split = make_split(70)
  batches = list(data.train_batches(split, 16, seed=0, epoch=1, host=HOST2))
  assert len(batches) == 4  # 70 // 16; the partial batch is dropped.
  images, labels = batches[0]
  assert images.shape == (2, 8, 8, 8, 3) and labels.shape == (2, 8)
  seen = np.concatenate([l.ravel() for _, l in batches])
  assert len(set(seen)) == 64
  np.testing.assert_array_equal(images.reshape(16, 8, 8, 3),
                                split.images[labels.ravel()])
  again = np.concatenate([l.ravel() for _, l in
                          data.train_batches(split, 16, seed=0, epoch=1, host=HOST2)])
  epoch2 = np.concatenate([l.ravel() for _, l in
                           data.train_batches(split, 16, seed=0, epoch=2, host=HOST2)])
  np.testing.assert_array_equal(seen, again)
  assert not np.array_equal(seen, epoch2)


def test_eval_batches_cover_everything_once_with_padding_weighted_zero():
  split = make_split(10)
  batches = list(data.eval_batches(split, 4, HOST2))
  assert len(batches) == 3
  labels = np.concatenate([l.ravel() for _, l, _ in batches])
  weights = np.concatenate([w.ravel() for _, _, w in batches])
  assert weights.sum() == 10
  np.testing.assert_array_equal(labels[weights == 1], np.arange(10))


def test_normalize_and_channel_stats():
  split = make_split(50)
  dataset = data.Dataset(split, None, split, 50)
  mean, std = dataset.channel_stats()
  pixels = split.images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, pixels.std(0), rtol=1e-6)
  x = np.asarray(augment.normalize(split.images, mean, std))
  np.testing.assert_allclose(x.reshape(-1, 3).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(x.reshape(-1, 3).std(0), 1, atol=1e-4)


def test_crop_and_flip_is_a_shifted_window_of_the_padded_image():
  image = make_split(1).images[0]
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  windows = {}
  for dy in range(9):
    for dx in range(9):
      window = padded[dy:dy + 8, dx:dx + 8]
      windows[(dy, dx, False)] = window
      windows[(dy, dx, True)] = window[:, ::-1]
  keys = jax.random.split(jax.random.key(0), 200)
  out = np.asarray(augment.augment_batch(keys, np.stack([image] * 200)))
  found = []
  for crop in out:
    matches = [k for k, w in windows.items() if np.array_equal(w, crop)]
    assert matches, 'an output is not a window of the padded image'
    found.append(matches[0])
  assert {f[2] for f in found} == {False, True}
  assert len({f[:2] for f in found}) > 40  # Offsets spread over the 81.


def folder_config(path):
  return ml_collections.ConfigDict(dict(
      dataset=f'folder:{path}', data_dir='', manual_dir='',
      validation_fraction=0.0, folds=0, fold=0, max_train_examples=0, seed=0))


def test_folder_dataset_reads_pixels_and_labels(tmp_path):
  written = write_folder(tmp_path)
  dataset = data.load(folder_config(tmp_path))
  assert dataset.num_classes == 2 and dataset.image_shape == (6, 6, 3)
  for name, split in (('train', dataset.train), ('test', dataset.test)):
    assert len(split) == (6 if name == 'train' else 4)
    for image, label in zip(split.images, split.labels):
      assert written[(name, image.tobytes())] == label


def test_folder_errors_name_the_path(tmp_path):
  with pytest.raises(DataError, match='has no train/ folder'):
    data.load(folder_config(tmp_path / 'missing'))
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  (tmp_path / 'empty' / 'test').mkdir()
  with pytest.raises(DataError, match='empty'):
    data.load(folder_config(tmp_path / 'empty'))
  write_folder(tmp_path / 'mixed', sizes={('train', 'dog', 1): (7, 6, 3)})
  with pytest.raises(DataError, match='one size'):
    data.load(folder_config(tmp_path / 'mixed'))


def _empty(folder):
  shutil.rmtree(folder)
  folder.mkdir()


@pytest.mark.parametrize('breaks, fragments', [
    (lambda root: shutil.rmtree(root / 'test'), ['{root} has no test/ folder']),
    (lambda root: _empty(root / 'test'), ['{root}/test is empty']),
    (lambda root: _empty(root / 'train/dog'),
     ['class folder {root}/train/dog holds no', 'image']),
    (lambda root: (root / 'test/dog').rename(root / 'test/cow'),
     ['only in train: dog', 'only in test: cow']),
    (lambda root: (root / 'train/notes.txt').write_text('cats'),
     ['{root}/train/notes.txt is a file']),
    (lambda root: Image.fromarray(np.zeros((7, 6, 3), np.uint8)).save(
        root / 'train/dog/1.png'), ['{root}/train/dog/1.png is 7x6 pixels',
                                    'one size']),
], ids=['no test split', 'empty split', 'class without images',
        'classes differ', 'a file among the classes', 'images of two sizes'])
def test_a_malformed_folder_is_one_line_naming_what_is_wrong(tmp_path, breaks,
                                                             fragments):
  write_folder(tmp_path)
  breaks(tmp_path)
  with pytest.raises(DataError) as error:
    data.load(folder_config(tmp_path))
  for fragment in fragments:
    assert fragment.format(root=tmp_path) in str(error.value)
  assert '\n' not in str(error.value)


def test_a_folder_is_decoded_once_then_read_from_the_cache(tmp_path,
                                                          monkeypatch):
  monkeypatch.setenv(caches.ENV, str(tmp_path / 'cache'))
  decoded = []
  decode = data._decode_folder
  monkeypatch.setattr(data, '_decode_folder',
                      lambda root: decoded.append(root) or decode(root))
  written = write_folder(tmp_path / 'data')
  config = folder_config(tmp_path / 'data')
  first, second = data.load(config), data.load(config)
  assert len(decoded) == 1
  assert len(list((tmp_path / 'cache' / 'folders').glob('*.npz'))) == 1
  for dataset in (first, second):
    assert dataset.num_classes == 2 and dataset.image_shape == (6, 6, 3)
    for name, split in (('train', dataset.train), ('test', dataset.test)):
      assert sorted(written[(name, i.tobytes())] for i in split.images) == \
          sorted(split.labels.tolist())
  # Another image in a file's place: a new entry, decoded anew.
  pixels = np.full((6, 6, 3), 7, np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'data' / 'train' / 'dog' / '0.png')
  third = data.load(config)
  assert len(decoded) == 2
  assert any((i == pixels).all() for i in third.train.images)
  assert not any((i == pixels).all() for i in second.train.images)
  # A damaged entry is decoded again, and replaced.
  entry, = (tmp_path / 'cache' / 'folders').glob(
      caches.folder_key(str(tmp_path / 'data')) + '.npz')
  entry.write_bytes(b'damaged')
  fourth = data.load(config)
  assert len(decoded) == 3
  np.testing.assert_array_equal(fourth.train.images, third.train.images)
  assert data.load(config).train.labels.tolist() == third.train.labels.tolist()
  assert len(decoded) == 3


def test_a_cache_that_cannot_be_written_or_is_off_only_decodes(tmp_path,
                                                              monkeypatch):
  write_folder(tmp_path / 'data')
  (tmp_path / 'file').write_text('')
  for setting in (str(tmp_path / 'file'), ''):  # folders/ cannot be made.
    monkeypatch.setenv(caches.ENV, setting)
    assert len(data.load(folder_config(tmp_path / 'data')).train) == 6
  assert caches.directory() is None
  assert sorted(p.name for p in tmp_path.iterdir()) == ['data', 'file']


def test_compiled_programs_go_in_the_cache_folder_unless_jax_names_one(
    tmp_path, monkeypatch):
  previous = (jax.config.jax_compilation_cache_dir,  # conftest's.
              jax.config.jax_compilation_cache_max_size)
  try:
    for setting, jax_setting, expected, size in (
        (str(tmp_path), None, str(tmp_path / 'jax'), 4 << 30),
        # JAX_COMPILATION_CACHE_DIR's folder, as JAX's settings say.
        (str(tmp_path), '/elsewhere', '/elsewhere', -1),
        ('', None, None, -1)):  # The caches are off.
      monkeypatch.setenv(caches.ENV, setting)
      jax.config.update('jax_compilation_cache_dir', jax_setting)
      jax.config.update('jax_compilation_cache_max_size', -1)
      caches.compilation_cache()
      assert jax.config.jax_compilation_cache_dir == expected
      assert jax.config.jax_compilation_cache_max_size == size
  finally:
    jax.config.update('jax_compilation_cache_dir', previous[0])
    jax.config.update('jax_compilation_cache_max_size', previous[1])


def test_tfds_offline_is_a_one_line_data_error(tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_can_reach_tfds_hosts', lambda: False)
  config = folder_config(tmp_path)
  config.dataset, config.data_dir = 'cifar10', str(tmp_path)
  with pytest.raises(DataError, match='cannot be downloaded') as error:
    data.load(config)
  assert '--config.dataset=folder:PATH' in str(error.value)
  assert '\n' not in str(error.value)


def test_unknown_tfds_name_is_a_config_error(tmp_path):
  config = folder_config(tmp_path)
  config.dataset = 'cifar11'
  with pytest.raises(ConfigError, match='not a TFDS data set name'):
    data.load(config)


def test_folds_are_disjoint_cover_the_training_split_and_are_fixed():
  split = make_split(103)
  validation = [data.split_fold(split, 4, i)[1] for i in range(4)]
  labels = np.concatenate([v.labels for v in validation])
  assert sorted(labels) == list(range(103))  # Disjoint, and all of it.
  assert {len(v) for v in validation} == {25, 26}
  for i, held in enumerate(validation):
    rest, again = data.split_fold(split, 4, i)
    np.testing.assert_array_equal(again.labels, held.labels)
    assert not set(rest.labels) & set(held.labels)
    assert len(rest) + len(held) == 103
