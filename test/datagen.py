"""Tiny data sets written in each data set's real distributed format, for tests.

Each ``write_*`` function writes a handful of small generated JPEGs plus the data
set's own label files (same names, columns, separators and quirks as the real
downloads) under `root`, optionally with the defects real copies have (a listed image
that is absent, an image file that is not an image, a malformed line), and returns an
:class:`Expected`: the schema targets each kept entry must get, the official splits,
and how many entries each defect kind must skip. :func:`write_all` writes all four
and returns the config keys of their roots (``{'data.rafdb.root': ..., ...}``);
:func:`as_overrides` turns those into ``key=value`` command-line overrides.

The images carry their labels: each labelled task paints one region in a colour of
its class (age: top band; gender: bottom-left; emotion: bottom-right), on noise, so a
short training run has something learnable.

Entry keys match ``Sample.key``: RAF-DB ``train_00001``, FairFace ``train/1.jpg``,
LAGENDA ``<img_name>#<csv line number>``, CelebA-HQ ``0.jpg``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from soft_biometrics_ros.labels import (AGE_GROUPS, EMOTIONS, GENDERS, IGNORE_INDEX,
                                        age_to_group_index)

IMAGE_SIZE = 48
# One colour per class, well apart, used to paint the class into the image.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0)]
CELEBA_ATTRIBUTES = (
    '5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose '
    'Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses '
    'Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache '
    'Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks '
    'Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick '
    'Wearing_Necklace Wearing_Necktie Young').split()
FAIRFACE_AGE_STRINGS = ('0-2', '3-9', '10-19', '20-29', '30-39', '40-49', '50-59', '60-69',
                        'more than 70')


@dataclass
class Expected:
    """What a reader must produce from a generated data set.

    labels: entry key -> targets (age, gender, emotion), IGNORE_INDEX = missing.
    splits: entry key -> official split (None where the data set has none).
    skipped / notes: count per kind (see training.datasets.common SKIP_KINDS, NOTE_KINDS).
    age_years: entry key -> age in years (LAGENDA). extra: data-set specific facts.
    """

    root: Path
    labels: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)
    splits: Dict[str, Optional[str]] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    notes: Dict[str, int] = field(default_factory=dict)
    age_years: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)

    def count(self, kind: str, number: int = 1) -> None:
        """Add `number` expected skips of `kind`."""
        self.skipped[kind] = self.skipped.get(kind, 0) + number

    def note(self, kind: str, number: int = 1) -> None:
        """Add `number` expected notes of `kind`."""
        self.notes[kind] = self.notes.get(kind, 0) + number


def paint_face(rng: np.random.Generator, targets: Tuple[int, int, int],
               size: Tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Return an RGB uint8 image (H, W, 3) whose regions show the labelled classes."""
    height, width = size
    image = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    age, gender, emotion = targets
    if age != IGNORE_INDEX:
        image[:height // 2] = PALETTE[age]
    if gender != IGNORE_INDEX:
        image[height // 2:, :width // 2] = PALETTE[gender * 4]
    if emotion != IGNORE_INDEX:
        image[height // 2:, width // 2:] = PALETTE[emotion + 1]
    return image


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB array as a JPEG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format='JPEG', quality=92)


def write_not_an_image(path: Path) -> None:
    """Write a file with an image name whose bytes are not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'this is not a JPEG file, only its name says so\n' * 4)


def write_rafdb(root: str | Path, n_train: int = 8, n_test: int = 4,
                with_missing_file: bool = True, with_malformed_line: bool = True,
                with_unreadable_file: bool = True, with_manual: bool = True,
                seed: int = 0) -> Expected:
    """Write RAF-DB basic (EmoLabel/, Image/aligned/, Annotation/manual/) under `root`.

    Emotion labels cycle over 1..7; manual gender codes cycle 0, 1, 2 (male, female,
    unsure) and age codes over 0..4. The first training entry has no manual file and
    the second a malformed one (both noted, gender missing). ``extra['seventy_plus']``
    lists the keys whose RAF-DB age group is 70+.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected = Expected(root, extra={'seventy_plus': []})
    lines: List[str] = []
    names = [f'train_{i:05d}' for i in range(1, n_train + 1)] + \
            [f'test_{i:04d}' for i in range(1, n_test + 1)]
    for position, stem in enumerate(names):
        label = position % 7 + 1
        gender_code, age_code = position % 3, position % 5
        gender = IGNORE_INDEX
        if with_manual and position == 0:
            expected.note('missing_attributes')
        elif with_manual and position == 1:
            manual = root / 'Annotation' / 'manual' / f'{stem}_manu_attri.txt'
            manual.parent.mkdir(parents=True, exist_ok=True)
            manual.write_text('45.1 50.2\n60.3\n')
            expected.note('malformed_attributes')
        elif with_manual:
            manual = root / 'Annotation' / 'manual' / f'{stem}_manu_attri.txt'
            manual.parent.mkdir(parents=True, exist_ok=True)
            landmarks = '\n'.join(f'{rng.uniform(20, 80):.2f}\t{rng.uniform(20, 80):.2f}'
                                  for _ in range(5))
            manual.write_text(f'{landmarks}\n{gender_code}\n{position % 3}\n{age_code}\n')
            gender = {0: GENDERS.index('male'), 1: GENDERS.index('female'),
                      2: IGNORE_INDEX}[gender_code]
            if age_code == 4:
                expected.extra['seventy_plus'].append(stem)
        targets = (IGNORE_INDEX, gender, label - 1)
        save_jpeg(root / 'Image' / 'aligned' / f'{stem}_aligned.jpg', paint_face(rng, targets))
        lines.append(f'{stem}.jpg {label}')
        expected.labels[stem] = targets
        expected.splits[stem] = stem.split('_')[0]
    if with_missing_file:
        lines.insert(2, 'train_09001.jpg 3')
        expected.count('missing_image')
    if with_unreadable_file:
        write_not_an_image(root / 'Image' / 'aligned' / 'test_09002_aligned.jpg')
        lines.append('test_09002.jpg 4')
        expected.count('unreadable_image')
    if with_malformed_line:
        lines.insert(4, 'train_09003.jpg 9')
        lines.append('this line has no label')
        expected.count('malformed_line', 2)
    label_file = root / 'EmoLabel' / 'list_patition_label.txt'
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text('\n'.join(lines) + '\n')
    return expected


def write_fairface(root: str | Path, n_train: int = 9, n_val: int = 4,
                   with_missing_file: bool = True, with_malformed_line: bool = True,
                   with_unreadable_file: bool = True,
                   image_dir: str = 'fairface-img-margin025-trainval', seed: int = 1) -> Expected:
    """Write FairFace (fairface_label_{train,val}.csv + image folder) under `root`.

    Ages cycle over the nine FairFace age strings, genders alternate. FairFace's val
    rows have official split 'test' (see training/datasets/fairface.py).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected = Expected(root)
    for split, count, csv_name, our_split in (('train', n_train, 'fairface_label_train.csv',
                                               'train'),
                                              ('val', n_val, 'fairface_label_val.csv', 'test')):
        rows = []
        for i in range(1, count + 1):
            age = (i - 1 + (3 if split == 'val' else 0)) % len(FAIRFACE_AGE_STRINGS)
            gender = 'Male' if i % 2 else 'Female'
            file_name = f'{split}/{i}.jpg'
            targets = (age, GENDERS.index(gender.lower()), IGNORE_INDEX)
            save_jpeg(root / image_dir / file_name, paint_face(rng, targets))
            rows.append([file_name, FAIRFACE_AGE_STRINGS[age], gender, 'East Asian',
                         'True' if i % 3 else 'False'])
            expected.labels[file_name] = targets
            expected.splits[file_name] = our_split
        if split == 'train':
            if with_missing_file:
                rows.insert(1, [f'{split}/901.jpg', '20-29', 'Male', 'White', 'True'])
                expected.count('missing_image')
            if with_malformed_line:
                rows.insert(3, [f'{split}/902.jpg', '5-7', 'Male', 'White', 'True'])
                rows.append([f'{split}/903.jpg', '20-29'])  # too few fields
                expected.count('malformed_line', 2)
                save_jpeg(root / image_dir / f'{split}/902.jpg',
                          paint_face(rng, (0, 0, IGNORE_INDEX)))
            if with_unreadable_file:
                write_not_an_image(root / image_dir / f'{split}/904.jpg')
                rows.append([f'{split}/904.jpg', '30-39', 'Female', 'Black', 'False'])
                expected.count('unreadable_image')
        with open(root / csv_name, 'w', newline='') as handle:
            writer = csv.writer(handle)
            writer.writerow(['file', 'age', 'gender', 'race', 'service_test'])
            writer.writerows(rows)
    return expected


def write_lagenda(root: str | Path, n_images: int = 5, with_missing_file: bool = True,
                  with_malformed_line: bool = True, with_unreadable_file: bool = True,
                  seed: int = 2) -> Expected:
    """Write LAGENDA (lagenda_annotation.csv + images/) under `root`: 2 persons per image.

    Ages (years) run over group boundaries (2, 3, 9, 10, ..., 70, 85); genders M, F and
    -1. Also written: a person whose face box is -1 (skipped, no_face_box) and one with
    age and gender -1 (skipped, unlabelled). ``extra['boxes']`` maps keys to the face
    boxes as written.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected = Expected(root, extra={'boxes': {}})
    ages = [2, 3, 9, 10, 19, 20, 35, 48, 59, 60, 69, 70, 85, 27]
    genders = ['M', 'F', '-1']
    header = ['img_name', 'age', 'gender', 'face_x0', 'face_y0', 'face_x1', 'face_y1',
              'person_x0', 'person_y0', 'person_x1', 'person_y1']
    # (csv row, (targets, years, grown box) for a row that must be kept, else None)
    rows: List[Tuple[List[str], Optional[tuple]]] = []
    size = 96
    for image_number in range(n_images):
        name = f'images/{image_number:06d}.jpg'
        canvas = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        for x0 in (4, 52):  # two persons side by side
            y0, x1, y1 = 20, x0 + 40, 60
            years = ages[len(rows) % len(ages)]
            gender_text = genders[len(rows) % len(genders)]
            gender = IGNORE_INDEX if gender_text == '-1' else \
                GENDERS.index('male' if gender_text == 'M' else 'female')
            targets = (age_to_group_index(years), gender, IGNORE_INDEX)
            canvas[y0:y1, x0:x1] = paint_face(rng, targets, (y1 - y0, x1 - x0))
            rows.append(([name, str(years), gender_text, str(x0), str(y0), str(x1), str(y1),
                          str(x0), '0', str(x1), str(size)],
                         (targets, float(years), (x0, y0, x1, y1))))
        save_jpeg(root / name, canvas)
    tail = ['0', '0', '40', '90']  # person box of the defect rows
    rows.append((['images/000000.jpg', '30', 'M', '-1', '-1', '-1', '-1', *tail], None))
    expected.count('no_face_box')
    rows.append((['images/000001.jpg', '-1', '-1', '10', '10', '30', '30', *tail], None))
    expected.count('unlabelled')
    if with_missing_file:
        rows.append((['images/999901.jpg', '40', 'F', '10', '10', '30', '30', *tail], None))
        expected.count('missing_image')
    if with_malformed_line:
        rows.insert(2, (['images/000002.jpg', 'forty', 'F', '10', '10', '30', '30', *tail],
                        None))
        rows.append((['images/000002.jpg', '40', 'X', '10', '10', '30', '30', *tail], None))
        rows.append((['images/000002.jpg', '40', 'F', '30', '10', '10', '30', *tail], None))
        expected.count('malformed_line', 3)
    if with_unreadable_file:
        write_not_an_image(root / 'images' / '999902.jpg')
        rows.append((['images/999902.jpg', '40', 'F', '10', '10', '30', '30', *tail], None))
        expected.count('unreadable_image')
    for index, (row, kept) in enumerate(rows):
        if kept is not None:
            key = f'{row[0]}#{index + 2}'  # csv line number (the header is line 1)
            expected.labels[key], expected.age_years[key], expected.extra['boxes'][key] = kept
            expected.splits[key] = None
    with open(root / 'lagenda_annotation.csv', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(row for row, _ in rows)
    return expected


def write_celeba_hq(root: str | Path, n: int = 9, with_mapping: bool = True,
                    with_missing_file: bool = True, with_malformed_line: bool = True,
                    with_unreadable_file: bool = True, seed: int = 3) -> Expected:
    """Write CelebAMask-HQ (attribute file, CelebA-HQ-img/, mapping file) under `root`.

    ``Male`` alternates; with the mapping, image i maps to an original CelebA image in
    train, val or test (i % 3), so the official splits are exercised.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected = Expected(root)
    male = CELEBA_ATTRIBUTES.index('Male')
    originals = {0: 1000, 1: 170000, 2: 190000}  # CelebA train / val / test numbers
    entries: List[str] = []
    mapping_lines = ['idx         orig_idx    orig_file']
    for i in range(n):
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        values[male] = 1 if i % 2 else -1
        targets = (IGNORE_INDEX, GENDERS.index('male' if i % 2 else 'female'), IGNORE_INDEX)
        save_jpeg(root / 'CelebA-HQ-img' / f'{i}.jpg', paint_face(rng, targets))
        # The real file has two spaces after the name and one between values.
        entries.append(f'{i}.jpg  ' + ' '.join(str(v) for v in values))
        expected.labels[f'{i}.jpg'] = targets
        original = originals[i % 3] + i
        mapping_lines.append(f'{i:<12d}{original - 1:<12d}{original:06d}.jpg')
        expected.splits[f'{i}.jpg'] = ('train', 'val', 'test')[i % 3] if with_mapping else None
    if with_missing_file:
        entries.append(f'{n + 100}.jpg  ' + ' '.join(['1'] * len(CELEBA_ATTRIBUTES)))
        expected.count('missing_image')
    if with_malformed_line:
        entries.insert(1, f'{n + 101}.jpg  ' + ' '.join(['1'] * (len(CELEBA_ATTRIBUTES) - 1)))
        entries.append(f'{n + 102}.jpg  ' + ' '.join(['0'] * len(CELEBA_ATTRIBUTES)))
        expected.count('malformed_line', 2)
    if with_unreadable_file:
        write_not_an_image(root / 'CelebA-HQ-img' / f'{n + 103}.jpg')
        entries.append(f'{n + 103}.jpg  ' + ' '.join(['-1'] * len(CELEBA_ATTRIBUTES)))
        expected.count('unreadable_image')
    (root / 'CelebAMask-HQ-attribute-anno.txt').write_text(
        f'{len(entries)}\n' + ' '.join(CELEBA_ATTRIBUTES) + '\n' + '\n'.join(entries) + '\n')
    if with_mapping:
        (root / 'CelebA-HQ-to-CelebA-mapping.txt').write_text('\n'.join(mapping_lines) + '\n')
    return expected


WRITERS = {'rafdb': write_rafdb, 'fairface': write_fairface, 'lagenda': write_lagenda,
           'celeba_hq': write_celeba_hq}


def write_all(root: str | Path, **options) -> Dict[str, str]:
    """Write all four data sets under `root`/<name>; return {'data.<name>.root': path}.

    `options` maps a data set name to keyword arguments of its writer.
    """
    root = Path(root)
    return {f'data.{name}.root': str(_write(name, root / name, options.get(name, {})).root)
            for name in WRITERS}


def write_all_expected(root: str | Path, **options) -> Dict[str, Expected]:
    """Write all four data sets under `root`/<name>; return {name: Expected}."""
    root = Path(root)
    return {name: _write(name, root / name, options.get(name, {})) for name in WRITERS}


def _write(name: str, root: Path, kwargs: dict) -> Expected:
    root.mkdir(parents=True, exist_ok=True)
    return WRITERS[name](root, **kwargs)


def as_overrides(roots: Dict[str, str]) -> List[str]:
    """Return ``key=value`` override strings for a {dotted key: value} mapping."""
    return [f'{key}={value}' for key, value in roots.items()]


def class_names(targets: Tuple[int, int, int]) -> Tuple[Optional[str], ...]:
    """Return the class names of a targets tuple (None where missing), for messages."""
    tables = (AGE_GROUPS, GENDERS, EMOTIONS)
    return tuple(None if value == IGNORE_INDEX else table[value]
                 for table, value in zip(tables, targets))


def is_missing(value: float) -> bool:
    """Return True for a NaN age in years."""
    return isinstance(value, float) and math.isnan(value)
