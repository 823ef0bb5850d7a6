"""LAGENDA reader: age in years and gender, one row per person, faces cropped from photos.

Layout as distributed (MiVOLO's lagenda_benchmark_images.zip + lagenda_annotation.csv)::

    lagenda_annotation.csv  columns img_name, age, gender, face_x0, face_y0, face_x1,
                            face_y1, person_x0, person_y0, person_x1, person_y1
    <img_name>              images, relative to root (or to data.lagenda.image_dir)

Several rows may share one image (one per person). A row whose face box is -1 (a
person whose face is not visible) is skipped as ``no_face_box``. Faces are cropped
exactly as the node crops detected faces (soft_biometrics_ros.runtime.detection.crop_faces):
the square centred on the face box, of side max(w, h) x (1 + 2 ``face_margin``), black
outside the image; keep ``data.lagenda.face_margin`` equal to the node's ``margin``.

Mapping onto the schema (soft_biometrics_ros.labels):

- age: years -> the FairFace group containing it (labels.age_to_group_index); the
  years are kept too (``Sample.age_years``) for the age MAE. -1 -> missing.
- gender: 'M' -> 'male', 'F' -> 'female', -1 -> missing.
- emotion: not labelled (missing). A row with neither age nor gender is skipped as
  ``unlabelled``.

Split: LAGENDA has no official split; 'test' and 'val' are carved per image with the
configured seed (all faces of an image stay in one split).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Tuple

from soft_biometrics_ros.labels import IGNORE_INDEX, age_to_group_index, class_index

from .common import (ReadReport, Sample, SourceData, csv_rows, keep_readable,
                     make_targets, register_reader, require_file, require_root)

NAME = 'lagenda'
LABEL_FILE = 'lagenda_annotation.csv'
REQUIRED_COLUMNS = ('img_name', 'age', 'gender', 'face_x0', 'face_y0', 'face_x1', 'face_y1')
LAGENDA_GENDERS = {'M': 'male', 'F': 'female'}
MISSING = '-1'
MAX_AGE_YEARS = 120


def _parse_row(row: dict) -> Tuple[str, float, int, int, Tuple[float, float, float, float]]:
    """Return (img_name, age_years or nan, age index, gender index, face box).

    Raises ValueError for a malformed row, LookupError('no_face_box') for a row
    without a face box.
    """
    if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
        raise ValueError('wrong number of fields')
    name = row['img_name'].strip()
    if not name:
        raise ValueError('empty img_name')
    age_text, gender_text = row['age'].strip(), row['gender'].strip()
    if age_text == MISSING:
        years, age = math.nan, IGNORE_INDEX
    else:
        years = float(age_text)
        if not 0 <= years <= MAX_AGE_YEARS:
            raise ValueError(f'age {age_text}')
        age = age_to_group_index(years)
    if gender_text == MISSING:
        gender = IGNORE_INDEX
    elif gender_text in LAGENDA_GENDERS:
        gender = class_index('gender', LAGENDA_GENDERS[gender_text])
    else:
        raise ValueError(f'gender {gender_text!r}')
    box = tuple(float(row[c]) for c in ('face_x0', 'face_y0', 'face_x1', 'face_y1'))
    if all(v == -1 for v in box):
        raise LookupError('no_face_box')
    if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f'face box {box}')
    return name, years, age, gender, box


@register_reader(NAME)
def read_lagenda(root: str | Path, image_dir: str = '', face_margin: float = 0.2,
                 verify_images: bool = True, progress: bool = False) -> SourceData:
    """Read LAGENDA from `root` (see the module docstring for layout and mapping)."""
    root = require_root(NAME, root)
    label_file = require_file(NAME, root / LABEL_FILE, 'annotation file')
    images = root / image_dir
    report = ReadReport(NAME, str(root))
    candidates: List[Tuple[Sample, str]] = []
    with open(label_file, newline='', encoding='utf-8') as handle:
        for number, row in csv_rows(handle, REQUIRED_COLUMNS, 'data.lagenda.root', LABEL_FILE):
            where = f'{LABEL_FILE}:{number}'
            try:
                name, years, age, gender, box = _parse_row(row)
            except LookupError:
                report.skip('no_face_box', where)
                continue
            except (ValueError, AttributeError) as error:
                report.skip('malformed_line', f'{where} ({error})')
                continue
            if age == IGNORE_INDEX and gender == IGNORE_INDEX:
                report.skip('unlabelled', where)
                continue
            sample = Sample(path=str(images / name), targets=make_targets(age=age, gender=gender),
                            source=NAME, split=None, key=f'{name}#{number}', group=name,
                            box=box, margin=face_margin, age_years=years)
            candidates.append((sample, where))
    samples = keep_readable(candidates, report, verify_images, progress, NAME,
                            'data.lagenda.image_dir (or data.lagenda.root)')
    return SourceData(NAME, samples, report)
