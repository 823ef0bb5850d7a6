"""The combined training/validation/test sets: every configured data set on one label schema.

:func:`load_sources` reads each data set that has a ``data.<name>.root`` with its
reader and assigns the final splits (seeded, see :mod:`training.datasets.common`).
:func:`build_datasets` turns them into three :class:`CombinedDataset` objects; the
training one is built on the emotion-oversampled list (see :mod:`training.sampling`),
so its ``targets`` are what :func:`training.sampling.build_sampler` weights.

An item is a dict::

    image      float tensor (3, S, S), PE-preprocessed (augmented for training)
    targets    {task: int64 tensor ()}   class index, -1 (IGNORE_INDEX) = not labelled
    mask       {task: bool tensor ()}    True where the task is labelled
    age_years  float32 tensor ()         age in years where known (LAGENDA), else NaN
    source     str                       data set name
    index      int64 tensor ()           index of the sample returned

which torch's default collate batches into (N, ...) tensors per key. An image that
fails to load (e.g. truncated after its header) is replaced by the next loadable
sample, with a warning and a count in ``load_failures`` (per worker process), and
the item carries ``load_failures`` (int64 tensor (): images that failed before it),
which training sums into train_summary.json: one bad file never stops training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from soft_biometrics_ros.runtime.detection import Detection, crop_faces
from soft_biometrics_ros.labels import IGNORE_INDEX, TASKS
from training.config import DATASET_NAMES

from .common import (DatasetError, Sample, SourceData, assign_splits, read_source,
                     targets_array)

LOGGER = logging.getLogger(__name__)
MAX_REPLACEMENTS = 16


def load_face(sample: Sample) -> np.ndarray:
    """Return the sample's face as an RGB uint8 array (H, W, 3).

    Without a box, the whole image. With one, the node's face crop
    (soft_biometrics_ros.runtime.detection.crop_faces with the sample's margin) at the crop's
    own resolution: a square of side round(max(w, h) x (1 + 2 margin)). Raises
    OSError/ValueError when the file cannot be decoded: JPEG and PNG are decoded strictly
    (soft_biometrics_ros.runtime.image_decode), so a damaged file is a load failure,
    not a grey training image; other formats are read by Pillow.
    """
    from soft_biometrics_ros.runtime.image_decode import decode_image, image_format
    with open(sample.path, 'rb') as handle:
        data = handle.read()
    if image_format(data) in ('JPEG', 'PNG'):
        rgb = np.ascontiguousarray(decode_image(data, what=f'image {sample.path}')[:, :, ::-1])
    else:
        with Image.open(sample.path) as image:
            rgb = np.array(image.convert('RGB'))  # a writable copy (torch warns on read-only)
    if sample.box is None:
        return rgb
    x0, y0, x1, y1 = sample.box
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * sample.margin)
    detection = Detection(box=tuple(sample.box), score=1.0, landmarks=None)
    return crop_faces(rgb, [detection], max(1, int(round(side))), margin=sample.margin)[0]


class CombinedDataset(Dataset):
    """Samples of any data sets, loaded, cropped and transformed on access.

    samples: the entries (duplicates allowed: emotion oversampling). transform: maps
    an RGB uint8 (H, W, 3) array to a float tensor (3, S, S); None returns the array
    (for inspection; not collatable). ``targets`` is the (N, 3) int64 label array in
    TASKS order (IGNORE_INDEX = missing).
    """

    def __init__(self, samples: Sequence[Sample],
                 transform: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
                 name: str = 'train'):
        self.samples: List[Sample] = list(samples)
        self.transform = transform
        self.name = name
        self.targets = targets_array(self.samples)
        self.sources = [s.source for s in self.samples]
        self.load_failures = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.samples):
            raise IndexError(f'index {index} outside the {len(self.samples)} samples')
        for attempt in range(min(MAX_REPLACEMENTS, len(self.samples))):
            position = (index + attempt) % len(self.samples)
            sample = self.samples[position]
            try:
                rgb = load_face(sample)
            except (OSError, ValueError) as error:
                self.load_failures += 1
                LOGGER.warning('%s set: cannot load %s (%s); using the next sample instead '
                               '(%d load failures in this process)', self.name, sample.path,
                               error, self.load_failures)
                continue
            item = self._item(position, sample, rgb)
            # How many images failed before this one was found: the loop sums these (they
            # come back from DataLoader worker processes too) into train_summary.json.
            item['load_failures'] = torch.tensor(attempt, dtype=torch.int64)
            return item
        raise RuntimeError(f'{self.name} set: {MAX_REPLACEMENTS} consecutive images from '
                           f'index {index} could not be loaded; is the data readable?')

    def _item(self, position: int, sample: Sample, rgb: np.ndarray) -> dict:
        image = self.transform(rgb) if self.transform is not None else rgb
        targets = {task: torch.tensor(value, dtype=torch.int64)
                   for task, value in zip(TASKS, sample.targets)}
        mask = {task: torch.tensor(value != IGNORE_INDEX)
                for task, value in zip(TASKS, sample.targets)}
        return {'image': image, 'targets': targets, 'mask': mask,
                'age_years': torch.tensor(sample.age_years, dtype=torch.float32),
                'source': sample.source, 'index': torch.tensor(position, dtype=torch.int64)}

    def __repr__(self) -> str:
        return f'CombinedDataset({self.name}, {len(self)} samples, transform={self.transform})'


def configured_sources(cfg) -> List[str]:
    """Return the names of the data sets the Config gives a root for."""
    return [name for name in DATASET_NAMES if cfg.data[name].root]


def load_sources(cfg, progress: bool = True) -> Dict[str, SourceData]:
    """Read every configured data set and assign final splits; log each read report."""
    names = configured_sources(cfg)
    if not names:
        raise DatasetError('no data set configured: set at least one of '
                           + ', '.join(f'data.{n}.root' for n in DATASET_NAMES))
    sources = {}
    for name in names:
        options = cfg.data[name].to_dict()
        root = options.pop('root')
        data = read_source(name, root, verify_images=cfg.data.verify_images,
                           progress=progress, **options)
        data.samples = assign_splits(data.samples, cfg.data.val_fraction,
                                     cfg.data.test_fraction, cfg.data.seed,
                                     official_val=data.official_val)
        data.report.log()
        sources[name] = data
    return sources


def split_samples(sources: Dict[str, SourceData], split: str) -> List[Sample]:
    """Return the samples of `split` from all sources, in source order."""
    return [s for data in sources.values() for s in data.samples if s.split == split]


def training_list(sources: Dict[str, SourceData], emotion_fraction: Optional[float],
                  seed: int) -> List[Sample]:
    """Return the training samples with emotion-labelled ones oversampled."""
    from training.sampling import oversample_task

    train = split_samples(sources, 'train')
    if not train:
        raise DatasetError('the configured data sets have no training samples')
    indices = oversample_task(targets_array(train), emotion_fraction, seed=seed)
    return [train[i] for i in indices]


@dataclass
class DataSplits:
    """The combined train (emotion-oversampled), val and test sets and their sources."""

    train: CombinedDataset
    val: CombinedDataset
    test: CombinedDataset
    sources: Dict[str, SourceData]

    def reports(self) -> Dict[str, dict]:
        """Return {data set: read report as plain data}."""
        return {name: data.report.to_dict() for name, data in self.sources.items()}


def build_datasets(cfg, sources: Optional[Dict[str, SourceData]] = None,
                   transforms: Optional[Tuple[Callable, Callable]] = None,
                   progress: bool = True) -> DataSplits:
    """Return the train/val/test CombinedDatasets of a training Config.

    sources: already loaded data (default: :func:`load_sources`). transforms:
    (train, eval) transforms (default: :func:`training.transforms.build_transforms`,
    the backbone's PE preprocessing with ``data.augment`` for training).
    """
    if sources is None:
        sources = load_sources(cfg, progress=progress)
    if transforms is None:
        from training.transforms import build_transforms
        transforms = build_transforms(cfg)
    train_transform, eval_transform = transforms
    train = training_list(sources, cfg.data.emotion_fraction, cfg.data.seed)
    return DataSplits(
        train=CombinedDataset(train, train_transform, 'train'),
        val=CombinedDataset(split_samples(sources, 'val'), eval_transform, 'val'),
        test=CombinedDataset(split_samples(sources, 'test'), eval_transform, 'test'),
        sources=sources)
