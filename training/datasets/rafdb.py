"""RAF-DB (Real-world Affective Faces, "basic" subset) reader: the emotion data set.

Layout as distributed (``root`` is the ``basic/`` folder)::

    EmoLabel/list_patition_label.txt      "train_00001.jpg 5" per line (sic: "patition")
    Image/aligned/train_00001_aligned.jpg 100x100 aligned faces     (data.rafdb.images=aligned)
    Image/original/train_00001.jpg        the original photos        (data.rafdb.images=original)
    Annotation/manual/train_00001_manu_attri.txt   optional: 5 landmark lines "x y",
                                          then gender, race, age-group lines

Mapping onto the schema (soft_biometrics_ros.labels):

- emotion: labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral ->
  EMOTIONS[label - 1] (surprised, scared, disgusted, happy, sad, angry, neutral).
- gender (manual attributes): 0 male -> 'male', 1 female -> 'female', 2 unsure -> missing.
- age (manual attributes): RAF-DB's groups 0-3, 4-19, 20-39, 40-69, 70+ straddle the
  nine FairFace groups, so 0-3 .. 40-69 are missing. Only 70+ maps exactly (onto '70+'),
  but it is **off by default** (``data.rafdb.age_70_plus``): RAF-DB would then only ever
  teach the age head the class 70+, and since its aligned 100x100 faces look unlike the
  other data sets, the head could learn "RAF-DB-looking face -> 70+" instead of age.
  Turn it on to add RAF-DB's 70+ faces where old faces are scarce.
- race: not used.

Split: official, from the file names (``train_*`` -> train, ``test_*`` -> test); val is
carved from train with the configured seed. A missing manual attribute file leaves
gender missing (noted, not skipped); a malformed one likewise (noted).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

from soft_biometrics_ros.labels import IGNORE_INDEX, TASKS, age_group_index, class_index

from .common import (ReadReport, Sample, SourceData, keep_readable, make_targets,
                     register_reader, require_file, require_root)

NAME = 'rafdb'
LABEL_FILE = Path('EmoLabel') / 'list_patition_label.txt'
MANUAL_DIR = Path('Annotation') / 'manual'
# RAF-DB basic emotion label (1..7) -> schema emotion name.
RAFDB_EMOTIONS = {1: 'surprised', 2: 'scared', 3: 'disgusted', 4: 'happy', 5: 'sad',
                  6: 'angry', 7: 'neutral'}
# Manual attribute gender code -> schema gender (2 = unsure -> missing).
RAFDB_GENDERS = {0: 'male', 1: 'female', 2: None}
RAFDB_AGE_GROUPS = ('0-3', '4-19', '20-39', '40-69', '70+')
RAFDB_RACES = 3  # Caucasian, African-American, Asian (not used)
LANDMARK_LINES = 5


def parse_manual_attributes(path: Path) -> Tuple[Optional[int], int]:
    """Return (gender code 0/1/2, age group code 0..4) of a ``*_manu_attri.txt`` file.

    Raises ValueError when the file does not have 5 landmark lines of two numbers
    followed by integer gender, race and age lines in range.
    """
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < LANDMARK_LINES + 3:
        raise ValueError(f'{len(lines)} lines, expected {LANDMARK_LINES} landmarks + 3')
    for line in lines[:LANDMARK_LINES]:
        coords = line.split()
        if len(coords) != 2:
            raise ValueError(f'landmark line {line!r} is not "x y"')
        [float(c) for c in coords]
    gender, race, age = (int(v) for v in lines[LANDMARK_LINES:LANDMARK_LINES + 3])
    if gender not in RAFDB_GENDERS or not 0 <= race < RAFDB_RACES \
            or not 0 <= age < len(RAFDB_AGE_GROUPS):
        raise ValueError(f'gender {gender}, race {race} or age {age} out of range')
    return gender, age


@register_reader(NAME)
def read_rafdb(root: str | Path, images: str = 'aligned', manual_attributes: bool = True,
               age_70_plus: bool = False, verify_images: bool = True,
               progress: bool = False) -> SourceData:
    """Read RAF-DB basic from `root` (see the module docstring for layout and mapping)."""
    root = require_root(NAME, root)
    label_file = require_file(NAME, root / LABEL_FILE, 'emotion label file')
    if images not in ('aligned', 'original'):
        raise ValueError(f"data.rafdb.images must be 'aligned' or 'original', got {images!r}")
    report = ReadReport(NAME, str(root))
    candidates: List[Tuple[Sample, str]] = []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        where = f'{LABEL_FILE}:{number}'
        if not line.strip():
            continue
        fields = line.split()
        try:
            name, label = fields[0], int(fields[1])
            if len(fields) != 2 or label not in RAFDB_EMOTIONS:
                raise ValueError
            stem, suffix = name.rsplit('.', 1)
            split = stem.split('_', 1)[0]
            if split not in ('train', 'test') or not suffix:
                raise ValueError
        except (ValueError, IndexError):
            report.skip('malformed_line', f'{where} {line.strip()!r}')
            continue
        if images == 'aligned':
            relative = Path('Image') / 'aligned' / f'{stem}_aligned.{suffix}'
        else:
            relative = Path('Image') / 'original' / name
        targets = make_targets(emotion=class_index('emotion', RAFDB_EMOTIONS[label]))
        sample = Sample(path=str(root / relative), targets=targets, source=NAME, split=split,
                        key=stem, group=str(relative))
        candidates.append((sample, where))
    samples = keep_readable(candidates, report, verify_images, progress, NAME,
                            'data.rafdb.root (or data.rafdb.images)')
    if manual_attributes:  # only for the images kept, so notes count kept entries only
        samples = [_with_manual_labels(root, sample, age_70_plus, report)
                   for sample in samples]
    return SourceData(NAME, samples, report)


def _with_manual_labels(root: Path, sample: Sample, age_70_plus: bool,
                        report: ReadReport) -> Sample:
    """Return `sample` with gender (and 70+ age) from its manual attribute file, if any."""
    path = root / MANUAL_DIR / f'{sample.key}_manu_attri.txt'
    if not path.is_file():
        report.note('missing_attributes', str(path.relative_to(root)))
        return sample
    try:
        gender_code, age_code = parse_manual_attributes(path)
    except (ValueError, UnicodeDecodeError, OSError) as error:
        report.note('malformed_attributes', f'{path.relative_to(root)}: {error}')
        return sample
    gender_name = RAFDB_GENDERS[gender_code]
    gender = class_index('gender', gender_name) if gender_name else IGNORE_INDEX
    age = IGNORE_INDEX
    if age_70_plus and RAFDB_AGE_GROUPS[age_code] == '70+':
        age = age_group_index('70+')
    emotion = sample.targets[TASKS.index('emotion')]
    return replace(sample, targets=make_targets(age=age, gender=gender, emotion=emotion))
