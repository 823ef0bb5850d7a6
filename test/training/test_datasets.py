"""Data set readers on tiny data sets written in each real format, splits, the combined set."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import datagen
from soft_biometrics_ros.models.backbone import preprocess_config, preprocess_images
from soft_biometrics_ros.labels import IGNORE_INDEX, TASKS, age_group_index
from training.config import load_config
from training.datasets import (READERS, CombinedDataset, DatasetError, assign_splits,
                               build_datasets, load_face, load_sources, read_source)
from training.datasets.common import SKIP_KINDS
from training.transforms import EvalTransform, TrainTransform, preprocess_for

from conftest import REPO_ROOT

TINY = REPO_ROOT / 'config' / 'train' / 'tiny_cpu.yaml'
IMAGE_SIZE = 64  # model input side for these tests (PE-Core-T's own is 384)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """All four data sets written once: {name: Expected}."""
    return datagen.write_all_expected(tmp_path_factory.mktemp('data'))


def _roots(written):
    return [f'data.{name}.root={expected.root}' for name, expected in written.items()]


@pytest.mark.parametrize('name', ['rafdb', 'fairface', 'lagenda', 'celeba_hq'])
def test_reader_gives_the_right_labels_and_counts_every_skip(written, name):
    expected = written[name]
    data = read_source(name, expected.root)
    labels = {sample.key: sample.targets for sample in data.samples}
    assert labels == expected.labels
    assert {s.key: s.split for s in data.samples} == expected.splits
    report = data.report.to_dict()
    assert report['skipped'] == {kind: expected.skipped.get(kind, 0) for kind in SKIP_KINDS}
    assert {k: v for k, v in report['notes'].items() if v} == expected.notes
    assert report['kept'] == len(expected.labels) == len(data.samples)
    assert all(s.source == name and s.path.startswith(str(expected.root))
               for s in data.samples)
    assert len(report['examples']) > 0  # the problems are shown, not only counted


def test_every_reader_is_registered():
    assert set(READERS) == {'rafdb', 'fairface', 'lagenda', 'celeba_hq'}


def test_rafdb_70_plus_maps_only_when_asked(written):
    expected = written['rafdb']
    seventy = set(expected.extra['seventy_plus'])
    assert seventy  # the generator wrote some 70+ faces
    data = read_source('rafdb', expected.root, age_70_plus=True)
    for sample in data.samples:
        wanted = age_group_index('70+') if sample.key in seventy else IGNORE_INDEX
        assert sample.label('age') == wanted
    plain = read_source('rafdb', expected.root, manual_attributes=False)
    assert all(s.label('gender') == IGNORE_INDEX for s in plain.samples)
    assert plain.report.notes.total() == 0


def test_lagenda_keeps_years_and_crops_faces_as_the_node_does(written):
    expected = written['lagenda']
    data = read_source('lagenda', expected.root, face_margin=0.2)
    for sample in data.samples:
        assert sample.age_years == expected.age_years[sample.key]
        assert sample.box == expected.extra['boxes'][sample.key] and sample.margin == 0.2
    left = next(s for s in data.samples if s.box[0] == 4)  # 40x40 face at x = 4..44
    face = load_face(left)
    # a square of side 40 * (1 + 2 * 0.2) = 56 centred on the box: x from -4 to 52,
    # so its first 4 columns lie outside the image and are black
    assert face.shape == (56, 56, 3)
    assert face[:, :3].max() == 0 and face[:, 8:].max() > 0
    painted = datagen.paint_face(np.random.default_rng(0), left.targets, (40, 40))
    age_colour = painted[0, 0]  # the top band of a generated face is its age colour
    np.testing.assert_allclose(face[12, 28], age_colour, atol=12)


def test_celeba_without_mapping_has_no_official_split(tmp_path):
    expected = datagen.write_celeba_hq(tmp_path, with_mapping=False)
    data = read_source('celeba_hq', tmp_path)
    assert not data.official_val and all(s.split is None for s in data.samples)
    assert {s.key: s.targets for s in data.samples} == expected.labels


def test_missing_label_files_and_wrong_folders_are_errors_naming_the_key(tmp_path, written):
    for name in READERS:
        with pytest.raises(DatasetError, match=f'data.{name}.root'):
            read_source(name, tmp_path)
    with pytest.raises(DatasetError, match=r'data.rafdb.root: folder .* does not exist'):
        read_source('rafdb', tmp_path / 'absent')
    with pytest.raises(DatasetError, match='data.lagenda.image_dir'):
        read_source('lagenda', written['lagenda'].root, image_dir='elsewhere')
    with pytest.raises(DatasetError, match='data.fairface.image_dir'):
        read_source('fairface', written['fairface'].root, image_dir='nowhere')


def test_image_checks_can_be_limited_to_existence(written):
    expected = written['fairface']
    data = read_source('fairface', expected.root, verify_images=False)
    # the file that is not an image is kept without header checks (caught when loaded)
    assert data.report.skipped['unreadable_image'] == 0
    assert len(data.samples) == len(expected.labels) + 1


def test_carved_splits_are_seeded_stable_and_keep_images_together(written):
    data = read_source('lagenda', written['lagenda'].root)
    first = assign_splits(data.samples, 0.3, 0.3, seed=0, official_val=False)
    again = assign_splits(data.samples, 0.3, 0.3, seed=0, official_val=False)
    other = [assign_splits(data.samples, 0.3, 0.3, seed=s, official_val=False)
             for s in range(1, 6)]
    assert [s.split for s in first] == [s.split for s in again]
    assert any([s.split for s in o] != [s.split for s in first] for o in other)
    by_image = {}
    for sample in first:
        by_image.setdefault(sample.group, set()).add(sample.split)
    assert all(len(splits) == 1 for splits in by_image.values())
    # removing samples never moves the others
    subset = assign_splits(data.samples[::2], 0.3, 0.3, seed=0, official_val=False)
    assert [s.split for s in subset] == [s.split for s in first[::2]]


def test_official_splits_stay_and_val_is_carved_from_train_only(written):
    data = read_source('rafdb', written['rafdb'].root)
    samples = data.samples * 40  # many entries so val is not empty by chance
    samples = [replace(s, group=f'{s.group}{i}') for i, s in enumerate(samples)]
    final = assign_splits(samples, 0.25, 0.5, seed=0, official_val=False)
    for before, after in zip(samples, final):
        if before.split == 'test':
            assert after.split == 'test'
        else:
            assert after.split in ('train', 'val')
    share = np.mean([s.split == 'val' for s, b in zip(final, samples) if b.split == 'train'])
    assert 0.15 < share < 0.35


@pytest.fixture(scope='module')
def splits(written):
    cfg = load_config(TINY, _roots(written) + [f'data.image_size={IMAGE_SIZE}'])
    return build_datasets(cfg, progress=False)


def test_combined_set_items_have_targets_masks_and_pe_inputs(splits, written):
    train = splits.train
    assert len(splits.val) > 0 and len(splits.test) > 0
    kept = {name: len(e.labels) for name, e in written.items()}
    assert len(set(id(s) for s in train.samples)) + len(splits.val) + len(splits.test) == \
        sum(kept.values())
    emotion = train.targets[:, TASKS.index('emotion')] != IGNORE_INDEX
    assert abs(emotion.mean() - 1 / 3) <= 1 / len(train)
    loader = DataLoader(train, batch_size=5, shuffle=False)
    batch = next(iter(loader))
    assert batch['image'].shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch['image'].dtype == torch.float32
    assert -1.0 - 1e-5 <= batch['image'].min() and batch['image'].max() <= 1.0 + 1e-5
    for t, task in enumerate(TASKS):
        np.testing.assert_array_equal(batch['targets'][task].numpy(), train.targets[:5, t])
        np.testing.assert_array_equal(batch['mask'][task].numpy(),
                                      train.targets[:5, t] != IGNORE_INDEX)
    assert len(batch['source']) == 5
    dataset, index = next((d, i) for d in (splits.val, splits.test)
                          for i, s in enumerate(d.samples) if s.source == 'lagenda')
    item = dataset[index]
    assert float(item['age_years']) == dataset.samples[index].age_years
    assert math.isnan(float(batch['age_years'][0])) == math.isnan(train.samples[0].age_years)


def test_eval_images_match_the_inference_preprocessing(splits):
    sample = splits.test.samples[0]
    item = splits.test[0]
    reference = preprocess_images([load_face(sample)], preprocess_config(
        'PE-Core-T-16-384', IMAGE_SIZE))[0]
    torch.testing.assert_close(item['image'], reference)


def test_train_transform_augments_reproducibly():
    rgb = datagen.paint_face(np.random.default_rng(0), (3, 1, 4), (40, 56))
    preprocess = preprocess_for('PE-Core-T-16-384', 32)
    transform = TrainTransform(preprocess)
    torch.manual_seed(0)
    first = transform(rgb)
    torch.manual_seed(0)
    assert torch.equal(first, transform(rgb))
    assert first.shape == (3, 32, 32)
    outputs = [transform(rgb) for _ in range(4)]
    assert any(not torch.equal(first, out) for out in outputs)  # augmentation does vary
    assert not torch.equal(first, EvalTransform(preprocess)(rgb))


def test_an_image_that_fails_to_load_is_replaced_and_counted(tmp_path, written):
    data = read_source('celeba_hq', written['celeba_hq'].root)
    samples = list(data.samples[:3])
    broken = tmp_path / 'truncated.jpg'
    whole = open(samples[0].path, 'rb').read()
    broken.write_bytes(whole[:len(whole) // 3])  # header intact, pixels cut off
    samples[0] = replace(samples[0], path=str(broken))
    dataset = CombinedDataset(samples, EvalTransform(preprocess_for('PE-Core-T-16-384', 32)))
    item = dataset[0]
    assert dataset.load_failures == 1
    assert int(item['index']) == 1  # the next sample stands in, with its own labels
    assert int(item['targets']['gender']) == samples[1].label('gender')


def test_load_sources_needs_a_configured_data_set():
    with pytest.raises(DatasetError, match='no data set configured'):
        load_sources(load_config(TINY), progress=False)
