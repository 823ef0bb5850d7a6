"""Readers of the training data sets, as distributed, and the combined data set.

One module per data set (``rafdb``, ``fairface``, ``lagenda``, ``celeba_hq``), each
registering a reader in :data:`READERS` and documenting how its labels map onto the
package schema; ``common`` holds the sample record, read report and split logic;
``combined`` builds the torch datasets a training Config asks for.

Typical use::

    from training.datasets import build_datasets
    splits = build_datasets(cfg)            # .train (oversampled), .val, .test, .sources
    sampler = training.sampling.build_sampler(cfg, splits.train, rank, world_size)
"""

from . import celeba_hq, fairface, lagenda, rafdb  # noqa: F401  (register the readers)
from .celeba_hq import read_celeba_hq
from .combined import (CombinedDataset, DataSplits, build_datasets, configured_sources,
                       load_face, load_sources, split_samples, training_list)
from .common import (READERS, SPLITS, DatasetError, ReadReport, Sample, SourceData,
                     assign_splits, class_counts, read_source, register_reader,
                     targets_array)
from .fairface import read_fairface
from .lagenda import read_lagenda
from .rafdb import read_rafdb

__all__ = ['READERS', 'SPLITS', 'CombinedDataset', 'DataSplits', 'DatasetError', 'ReadReport',
           'Sample', 'SourceData', 'assign_splits', 'build_datasets', 'class_counts',
           'configured_sources', 'load_face', 'load_sources', 'read_celeba_hq',
           'read_fairface', 'read_lagenda', 'read_rafdb', 'read_source', 'register_reader',
           'split_samples', 'targets_array', 'training_list']
