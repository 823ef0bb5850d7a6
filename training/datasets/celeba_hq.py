"""CelebA-HQ reader (the CelebAMask-HQ release): gender from the 40 CelebA attributes.

Layout as distributed (``root`` is the ``CelebAMask-HQ/`` folder)::

    CelebAMask-HQ-attribute-anno.txt   line 1: image count; line 2: the 40 attribute names;
                                       then "0.jpg  -1 1 1 -1 ..." (irregular spacing)
    CelebA-HQ-img/0.jpg ...            1024x1024 faces
    CelebA-HQ-to-CelebA-mapping.txt    optional: "idx orig_idx orig_file" per image

Mapping onto the schema (soft_biometrics_ros.labels):

- gender: attribute ``Male`` +1 -> 'male', -1 -> 'female'.
- age: missing (``Young`` is too coarse to give an age group). emotion: missing
  (``Smiling`` is not an emotion class).

Split: CelebA's official split through the mapping file when it is present (and
``data.celeba_hq.official_split``): original CelebA images 1..162770 are train,
162771..182637 val, the rest test (CelebA's list_eval_partition.txt). Without it,
'test' and 'val' are carved with the configured seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from soft_biometrics_ros.labels import class_index

from .common import (DatasetError, ReadReport, Sample, SourceData, keep_readable,
                     make_targets, register_reader, require_file, require_root)

NAME = 'celeba_hq'
ATTRIBUTE_FILE = 'CelebAMask-HQ-attribute-anno.txt'
IMAGE_DIR = 'CelebA-HQ-img'
MAPPING_FILE = 'CelebA-HQ-to-CelebA-mapping.txt'
NUM_ATTRIBUTES = 40
GENDER_ATTRIBUTE = 'Male'
# Last original CelebA image number (1-based, as in 000001.jpg) of train and of val.
CELEBA_LAST_TRAIN = 162770
CELEBA_LAST_VAL = 182637


def celeba_split(original_number: int) -> str:
    """Return CelebA's official split of original image number `original_number` (1-based)."""
    if original_number <= CELEBA_LAST_TRAIN:
        return 'train'
    return 'val' if original_number <= CELEBA_LAST_VAL else 'test'


def read_mapping(path: Path, report: ReadReport) -> Dict[str, str]:
    """Return {'N.jpg': split} from CelebA-HQ-to-CelebA-mapping.txt (bad lines noted)."""
    splits = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == 'idx':
            continue
        try:
            index, orig_file = int(fields[0]), fields[2]
            splits[f'{index}.jpg'] = celeba_split(int(Path(orig_file).stem))
        except (ValueError, IndexError):
            report.note('malformed_attributes', f'{MAPPING_FILE}:{number}')
    return splits


@register_reader(NAME)
def read_celeba_hq(root: str | Path, official_split: bool = True, verify_images: bool = True,
                   progress: bool = False) -> SourceData:
    """Read CelebAMask-HQ from `root` (see the module docstring for layout and mapping)."""
    root = require_root(NAME, root)
    attribute_file = require_file(NAME, root / ATTRIBUTE_FILE, 'attribute file')
    report = ReadReport(NAME, str(root))
    lines = attribute_file.read_text().splitlines()
    try:
        declared = int(lines[0].split()[0])
        names = lines[1].split()
        male_column = names.index(GENDER_ATTRIBUTE)
    except (IndexError, ValueError):
        raise DatasetError(f'data.celeba_hq.root: {ATTRIBUTE_FILE} must start with the image '
                           f'count and a line of {NUM_ATTRIBUTES} attribute names including '
                           f'{GENDER_ATTRIBUTE}') from None
    splits = {}
    mapping = root / MAPPING_FILE
    if official_split and mapping.is_file():
        splits = read_mapping(mapping, report)
    candidates: List[Tuple[Sample, str]] = []
    entries = 0
    for number, line in enumerate(lines[2:], start=3):
        where = f'{ATTRIBUTE_FILE}:{number}'
        fields = line.split()
        if not fields:
            continue
        entries += 1
        try:
            name, values = fields[0], [int(v) for v in fields[1:]]
            if len(values) != len(names) or any(v not in (-1, 1) for v in values) \
                    or not name.lower().endswith(('.jpg', '.png')):
                raise ValueError
        except ValueError:
            report.skip('malformed_line', f'{where} {line.strip()[:60]!r}')
            continue
        gender = class_index('gender', 'male' if values[male_column] == 1 else 'female')
        relative = f'{IMAGE_DIR}/{name}'
        sample = Sample(path=str(root / relative), targets=make_targets(gender=gender),
                        source=NAME, split=splits.get(name), key=name, group=relative)
        candidates.append((sample, where))
    if entries != declared:
        report.note('count_mismatch', f'{ATTRIBUTE_FILE} declares {declared} images, '
                                      f'lists {entries}')
    samples = keep_readable(candidates, report, verify_images, progress, NAME,
                            'data.celeba_hq.root')
    return SourceData(NAME, samples, report, official_val=bool(splits))
