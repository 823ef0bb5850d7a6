"""FairFace reader: age group and gender (the schema's age groups are FairFace's).

Layout as distributed (``root`` holds the two label files)::

    fairface_label_train.csv   columns file,age,gender,race,service_test
    fairface_label_val.csv     (file = "train/1.jpg", "val/1.jpg", relative to the image folder)
    fairface-img-margin025-trainval/train/1.jpg ...   (or the images directly under root,
                                                      or data.fairface.image_dir)

Mapping onto the schema (soft_biometrics_ros.labels):

- age: '0-2', '3-9', '10-19', '20-29', '30-39', '40-49', '50-59', '60-69' -> the group of
  the same name; 'more than 70' -> '70+'. The same nine groups: no information lost.
- gender: 'Male' -> 'male', 'Female' -> 'female'.
- emotion: not labelled (missing). race and service_test: not used.

Split: official. FairFace's val set is the benchmark everyone reports, so it becomes
'test' here; 'val' is carved from train with the configured seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from soft_biometrics_ros.labels import age_group_index, class_index

from .common import (DatasetError, ReadReport, Sample, SourceData, csv_rows, keep_readable,
                     make_targets, register_reader, require_root)

NAME = 'fairface'
LABEL_FILES = (('fairface_label_train.csv', 'train'), ('fairface_label_val.csv', 'test'))
REQUIRED_COLUMNS = ('file', 'age', 'gender')
# FairFace age string -> schema age group name.
FAIRFACE_AGES = {
    '0-2': '0-2', '3-9': '3-9', '10-19': '10-19', '20-29': '20-29', '30-39': '30-39',
    '40-49': '40-49', '50-59': '50-59', '60-69': '60-69', 'more than 70': '70+', '70+': '70+'}
FAIRFACE_GENDERS = {'Male': 'male', 'Female': 'female'}
# Image folders of the two FairFace downloads, tried in order when image_dir is ''.
IMAGE_DIR_CANDIDATES = ('', 'fairface-img-margin025-trainval', 'fairface-img-margin125-trainval')


def _image_dir(root: Path, image_dir: str, first_file: str) -> Path:
    if image_dir:
        return root / image_dir
    for candidate in IMAGE_DIR_CANDIDATES:
        if (root / candidate / first_file).is_file():
            return root / candidate
    return root


@register_reader(NAME)
def read_fairface(root: str | Path, image_dir: str = '', verify_images: bool = True,
                  progress: bool = False) -> SourceData:
    """Read FairFace from `root` (see the module docstring for layout and mapping)."""
    root = require_root(NAME, root)
    present = [(root / name, split) for name, split in LABEL_FILES if (root / name).is_file()]
    if not present:
        raise DatasetError(f'data.fairface.root: neither {LABEL_FILES[0][0]} nor '
                           f'{LABEL_FILES[1][0]} found in {root}')
    report = ReadReport(NAME, str(root))
    rows: List[Tuple[dict, str, str]] = []
    for path, split in present:
        with open(path, newline='', encoding='utf-8') as handle:
            for number, row in csv_rows(handle, REQUIRED_COLUMNS, 'data.fairface.root',
                                        path.name):
                rows.append((row, split, f'{path.name}:{number}'))
    first_file = next((r['file'].strip() for r, _, _ in rows if r.get('file')), '')
    images = _image_dir(root, image_dir, first_file)
    candidates: List[Tuple[Sample, str]] = []
    for row, split, where in rows:
        try:
            if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
                raise ValueError  # too many or too few fields on the line
            file_name = row['file'].strip()
            age_name = FAIRFACE_AGES[row['age'].strip()]
            gender_name = FAIRFACE_GENDERS[row['gender'].strip()]
            if not file_name:
                raise ValueError
        except (KeyError, ValueError, AttributeError):
            report.skip('malformed_line', f'{where} {dict(row)!r}')
            continue
        targets = make_targets(age=age_group_index(age_name),
                               gender=class_index('gender', gender_name))
        sample = Sample(path=str(images / file_name), targets=targets, source=NAME,
                        split=split, key=file_name, group=file_name)
        candidates.append((sample, where))
    samples = keep_readable(candidates, report, verify_images, progress, NAME,
                            'data.fairface.image_dir (or data.fairface.root)')
    return SourceData(NAME, samples, report)
