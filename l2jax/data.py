"""Data sets through TFDS, held in host memory as uint8, batched for pmap.

`config.dataset` is a TFDS name (read with `config.data_dir`, prepared from
`config.manual_dir` when set) or ``folder:PATH``, read with
`tfds.folder_dataset.ImageFolder` (PATH/train/<class>/*.jpg, PATH/test/...)
and kept decoded by `l2jax.caches`.
Normalization and augmentation happen on the device (`l2jax.augment`).
"""

import contextlib
import dataclasses
import os
import re
import socket
import tempfile
from typing import Iterator, Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from l2jax import caches
from l2jax import devices
from l2jax import logs
from l2jax.errors import ConfigError, DataError

FOLDER_PREFIX = 'folder:'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')  # The files ImageFolder reads.


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, index) -> 'Split':
    return Split(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  validation: Optional[Split]
  test: Split
  num_classes: int

  @property
  def image_shape(self) -> tuple:
    return self.train.images.shape[1:]

  def channel_stats(self) -> tuple:
    """Per-channel mean and std of the training images, in [0, 1] units.

    A channel that is the same in every pixel has std 0; it is given 1,
    so that normalizing makes it 0 rather than dividing by 0.
    """
    pixels = self.train.images.reshape(-1, self.train.images.shape[-1])
    # Compared as integers: a float std of equal values need not be 0.
    constant = pixels.min(0) == pixels.max(0)
    pixels = pixels.astype(np.float64) / 255.0
    return (pixels.mean(0).astype(np.float32),
            np.where(constant, 1.0, pixels.std(0)).astype(np.float32))


def load(config) -> Dataset:
  """Reads train and test once, then holds out validation and subsets."""
  logging.info('reading %s…', config.dataset)
  if config.dataset.startswith(FOLDER_PREFIX):
    train, test, num_classes = _load_folder(config.dataset[len(FOLDER_PREFIX):])
  else:
    train, test, num_classes = _load_tfds(
        config.dataset, config.data_dir or None, config.manual_dir or None)
  if config.folds >= 2:
    train, validation = split_fold(train, config.folds, config.fold)
  else:
    train, validation = split_validation(
        train, config.validation_fraction, config.seed)
  if config.max_train_examples:
    train = train.take(slice(0, config.max_train_examples))
  return Dataset(train, validation, test, num_classes)


FOLD_SEED = 0  # The folds are the same for every config.seed.


def split_fold(train: Split, folds: int, fold: int):
  """(the other folds, fold `fold`) of `folds` disjoint folds of `train`
  that together cover it, by a fixed shuffle; folds differ in size by at
  most one example."""
  order = np.random.default_rng(FOLD_SEED).permutation(len(train))
  held = np.zeros(len(train), bool)
  held[np.array_split(order, folds)[fold]] = True
  return train.take(np.flatnonzero(~held)), train.take(np.flatnonzero(held))


def split_validation(train: Split, fraction: float, seed: int):
  """Holds out `fraction` of train, chosen by a fixed-seed shuffle (an empty
  split when fraction × N rounds to 0: its loss and accuracy are null)."""
  if not fraction:
    return train, None
  order = np.random.default_rng(seed).permutation(len(train))
  n_val = int(round(fraction * len(train)))
  return train.take(np.sort(order[n_val:])), train.take(np.sort(order[:n_val]))


def _read_split(builder, split: str) -> Split:
  """Decodes a whole split into memory; images of mixed sizes raise.

  (`batch_size=-1` would pad mixed sizes to the largest, silently.)
  """
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  chunks = list(tfds.as_numpy(ds.batch(4096)))
  return Split(np.concatenate([c[0] for c in chunks]).astype(np.uint8),
               np.concatenate([c[1] for c in chunks]).astype(np.int32))


def _load_folder(path: str):
  root = os.path.abspath(os.path.expanduser(path))
  _check_folder_layout(root)
  arrays = caches.cached(root, lambda: _decode_folder(root))
  return (Split(arrays['train_images'], arrays['train_labels']),
          Split(arrays['test_images'], arrays['test_labels']),
          int(arrays['num_classes']))


def _decode_folder(root: str) -> dict:
  """{train,test}_{images,labels} and num_classes, through ImageFolder."""
  logs.import_tensorflow()  # Before TFDS does, which ImageFolder does.
  with _tfds_temp_folder_removed():
    builder = tfds.folder_dataset.ImageFolder(root)
  arrays = {'num_classes': np.array(builder.info.features['label'].num_classes)}
  for split in ('train', 'test'):
    try:
      read = _read_split(builder, split)
    except Exception as e:  # TF reports mixed sizes and bad files variously.
      raise DataError(_name_bad_image(os.path.join(root, split),
                                      builder.info.features['image'])) from e
    arrays[f'{split}_images'] = read.images
    arrays[f'{split}_labels'] = read.labels
  return arrays


def _check_folder_layout(root: str) -> None:
  """Raises DataError naming the first part of `root` that ImageFolder would
  read wrongly: a missing or empty split, a file among the class folders, a
  class folder without images, or classes that differ between the splits."""
  classes = {}
  for split in ('train', 'test'):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DataError(
          f'folder data set {root} has no {split}/ folder; it needs '
          f'{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg')
    # ImageFolder takes every folder as a class, hidden ones too, and skips
    # files silently: a stray one (hidden ones aside) means a wrong layout.
    entries = [e for e in os.scandir(split_dir)
               if e.is_dir() or not e.name.startswith('.')]
    if not entries:
      raise DataError(f'{split_dir} is empty; put one subfolder per class in it')
    for entry in sorted(entries, key=lambda e: e.name):
      if not entry.is_dir():
        raise DataError(
            f'{entry.path} is a file; {split_dir} must hold only one folder '
            'per class, with the images inside')
      if not any(name.lower().endswith(IMAGE_SUFFIXES)
                 for name in os.listdir(entry.path)):
        raise DataError(
            f'class folder {entry.path} holds no {"/".join(IMAGE_SUFFIXES)} '
            'image; add its images or remove the folder')
    classes[split] = {e.name for e in entries}
  if classes['train'] != classes['test']:
    only = {split: ', '.join(sorted(classes[split] - classes[other])) or 'none'
            for split, other in (('train', 'test'), ('test', 'train'))}
    raise DataError(
        f'{root}/train and {root}/test hold different classes (only in train: '
        f'{only["train"]}; only in test: {only["test"]}); give both splits the '
        'same class folders')


def _name_bad_image(split_dir: str, image_feature) -> str:
  """The message for a split that did not decode: names the first image that
  does not decode, or that differs in size from the first, as ImageFolder
  decodes them (`image_feature`)."""
  import tensorflow as tf  # Slow to import; TFDS imports it when it reads.
  first = None
  for class_dir in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if not class_dir.is_dir():
      continue
    for name in sorted(os.listdir(class_dir.path)):
      if not name.lower().endswith(IMAGE_SUFFIXES):
        continue
      path = os.path.join(class_dir.path, name)
      try:
        shape = tuple(image_feature.decode_example(tf.io.read_file(path)).shape)
      except tf.errors.OpError as e:
        # TF's message, less its graph-node prefix and op suffix.
        reason = re.sub(r'\{\{.*?\}\}|\[Op:.*', '', e.message).split('\n')[0]
        return (f'cannot decode the image {path} ({reason.strip()}); replace '
                'or remove it')
      if first is None:
        first = (path, shape)
      elif shape[:2] != first[1][:2]:
        return (f'the image {path} is {shape[0]}x{shape[1]} pixels (height x '
                f'width) but {first[0]} is {first[1][0]}x{first[1][1]}; all '
                'images of a folder data set must have one size')
  return (f'cannot read the images in {split_dir}; every image must decode '
          'and all must have one size')


def _can_reach_tfds_hosts(timeout: float = 5.0) -> bool:
  try:
    socket.create_connection(('storage.googleapis.com', 443), timeout).close()
    return True
  except OSError:
    return False


def _builder_trusting_manual_dir(cls, data_dir, manual_dir):
  """`cls` with the checksums of the files in `manual_dir` registered.

  TFDS only takes a file from `manual_dir` when its checksum matches the
  registered one; Debian's Fashion-MNIST files hold the same pixels, gzipped
  differently. The user named the folder, so its files are trusted as they
  are, without touching TFDS's own checksum files.
  """
  from etils import epath
  from tensorflow_datasets.core.download import checksums
  folder = epath.Path(manual_dir)
  url_infos = {
      url: checksums.compute_url_info(folder / info.filename)
      for url, info in (cls.url_infos or {}).items()
      if info.filename and (folder / info.filename).exists()}
  if not url_infos:
    raise DataError(
        f'config.manual_dir={manual_dir} holds none of the files '
        f'{cls.name} is made from; see its TFDS page for their names')
  local = type(cls.__name__, (cls,), {'url_infos': url_infos, 'name': cls.name},
               skip_registration=True)
  return local(data_dir=data_dir)


@contextlib.contextmanager
def _tfds_temp_folder_removed():
  """A builder made inside leaves no folder behind.

  A TFDS builder whose data are not prepared (an ImageFolder's never are)
  makes a temporary folder for metadata from GCS and leaves it
  (`DatasetInfo.initialize_from_bucket`): here it makes it in a folder of
  ours, removed after.
  """
  with tempfile.TemporaryDirectory(prefix='l2jax-tfds-') as folder:
    saved, tempfile.tempdir = tempfile.tempdir, folder
    try:
      yield
    finally:
      tempfile.tempdir = saved


def _load_tfds(name: str, data_dir, manual_dir):
  try:
    with _tfds_temp_folder_removed():
      builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(
        f'config.dataset={name!r} is not a TFDS data set name nor '
        f'{FOLDER_PREFIX}PATH; try cifar10, cifar100, mnist, fashion_mnist') from e
  logs.import_tensorflow()  # Before TFDS does, to prepare or read.
  if not builder.is_prepared():
    if manual_dir:
      with _tfds_temp_folder_removed():
        local = _builder_trusting_manual_dir(type(builder), data_dir,
                                             manual_dir)
      local.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
      builder = tfds.builder(name, data_dir=data_dir)  # Reads what was made.
    elif not _can_reach_tfds_hosts():
      raise DataError(
          f'TFDS data set {name!r} is not in {builder.data_dir_root} and '
          'cannot be downloaded (no network); pass --config.data_dir=DIR '
          'holding it prepared, --config.manual_dir=DIR with its source '
          f'files, or --config.dataset={FOLDER_PREFIX}PATH')
    else:
      builder.download_and_prepare()
  missing = {'train', 'test'} - set(builder.info.splits)
  if missing:
    raise ConfigError(f'TFDS data set {name!r} has no {sorted(missing)} split')
  train, test = (_read_split(builder, s) for s in ('train', 'test'))
  return train, test, builder.info.features['label'].num_classes


def _shard(array, host: devices.Host):
  """This process's rows of a global batch, as (devices, rows/devices, ...):
  process i of n holds the i-th n-th, split over its local devices."""
  rows = len(array) // host.count
  return array[host.index * rows:(host.index + 1) * rows].reshape(
      host.local_devices, -1, *array.shape[1:])


def train_batches(split: Split, batch_size: int, seed: int, epoch: int,
                  start: int = 0, host: devices.Host = devices.Host()
                  ) -> Iterator[tuple]:
  """One epoch of (images, labels) from step `start` on, as `_shard` shapes.

  The order is a permutation keyed by (seed, epoch), so a resumed run sees
  the same batches; the last partial batch is dropped.
  """
  order = np.random.default_rng([seed, epoch]).permutation(len(split))
  for step in range(start, len(split) // batch_size):
    batch = split.take(np.sort(order[step * batch_size:(step + 1) * batch_size]))
    yield _shard(batch.images, host), _shard(batch.labels, host)


def eval_batches(split: Split, batch_size: int,
                 host: devices.Host = devices.Host()) -> Iterator[tuple]:
  """All of `split` as (images, labels, weights); padding has weight 0."""
  for start in range(0, len(split), batch_size):
    batch = split.take(slice(start, start + batch_size))
    pad = batch_size - len(batch)
    weights = np.concatenate([np.ones(len(batch)), np.zeros(pad)])
    images = np.pad(batch.images, [(0, pad)] + [(0, 0)] * 3)
    labels = np.pad(batch.labels, (0, pad))
    yield tuple(_shard(a, host)
                for a in (images, labels, weights.astype(np.float32)))
