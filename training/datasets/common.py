"""What every data set reader shares: the sample record, the read report, the reader registry.

A reader turns a data set folder, as distributed, into a list of :class:`Sample` records
labelled on the package schema (:mod:`soft_biometrics_ros.labels`): one target per task
in ``TASKS`` order, ``IGNORE_INDEX`` (-1) where the data set carries no label for it.
Problems in the data (an image listed but absent, a file that is not an image, a line
that does not parse) never stop a reader: the entry is skipped and counted in the
:class:`ReadReport`, whose summary is logged and written by ``python -m training stats``.
A label file that is missing altogether, or a folder in which no listed image exists,
is a configuration error and raises :class:`DatasetError` naming the key to fix.

Splits: each reader assigns a data set's official split where it has one
('train'/'val'/'test'; an official evaluation split is 'test'), ``None`` where it has
none. :func:`assign_splits` then carves, reproducibly from a seed and the image's
relative path (so all faces of one image land in the same split, and adding files
never moves others), 'val' out of 'train' where a data set has no official val, and
'test' + 'val' out of samples without an official split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from soft_biometrics_ros.labels import IGNORE_INDEX, NUM_CLASSES, TASKS

LOGGER = logging.getLogger(__name__)

SPLITS: Tuple[str, ...] = ('train', 'val', 'test')
# Problem kinds a reader counts. Skips drop the entry; notes keep it with fewer labels.
SKIP_KINDS: Tuple[str, ...] = (
    'missing_image', 'unreadable_image', 'malformed_line', 'unlabelled', 'no_face_box')
NOTE_KINDS: Tuple[str, ...] = ('missing_attributes', 'malformed_attributes', 'count_mismatch')
MAX_EXAMPLES = 5


class DatasetError(RuntimeError):
    """A data set cannot be read at all (missing label file, wrong folder); says what to fix."""


@dataclass(frozen=True)
class Sample:
    """One labelled face.

    path: absolute image path. targets: one class index per task in TASKS order,
    IGNORE_INDEX where unlabelled. source: data set name. split: 'train'/'val'/'test'
    (None until :func:`assign_splits` for data sets without an official split).
    key: the entry's id in its data set (file name, csv row). group: the image path
    relative to the data set root (splits never separate a group). box: face box
    (x0, y0, x1, y1) in pixels, or None to use the whole image; margin: the face is
    then cropped as the node crops faces (soft_biometrics_ros.runtime.detection.crop_faces:
    the square centred on the box, of side max(w, h) x (1 + 2 margin), black outside
    the image). age_years: the age in years where the data set gives it, else NaN.
    """

    path: str
    targets: Tuple[int, int, int]
    source: str
    split: Optional[str]
    key: str
    group: str
    box: Optional[Tuple[float, float, float, float]] = None
    margin: float = 0.0
    age_years: float = math.nan

    def label(self, task: str) -> int:
        """Return the class index of `task` (IGNORE_INDEX when unlabelled)."""
        return self.targets[TASKS.index(task)]


def make_targets(age: int = IGNORE_INDEX, gender: int = IGNORE_INDEX,
                 emotion: int = IGNORE_INDEX) -> Tuple[int, int, int]:
    """Return a targets tuple in TASKS order, checking each index against the schema."""
    values = {'age': age, 'gender': gender, 'emotion': emotion}
    for task, value in values.items():
        if value != IGNORE_INDEX and not 0 <= value < NUM_CLASSES[task]:
            raise ValueError(f'{task} class index {value} outside 0..{NUM_CLASSES[task] - 1}')
    return tuple(values[task] for task in TASKS)


@dataclass
class ReadReport:
    """What a reader kept, skipped and noticed in one data set."""

    source: str
    root: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    examples: List[str] = field(default_factory=list)

    def skip(self, kind: str, where: str) -> None:
        """Count one dropped entry of `kind` (one of SKIP_KINDS), remembering an example."""
        if kind not in SKIP_KINDS:
            raise ValueError(f'unknown skip kind {kind!r}')
        self.skipped[kind] += 1
        self._example(f'{kind}: {where}')

    def note(self, kind: str, where: str) -> None:
        """Count one kept entry with a problem of `kind` (one of NOTE_KINDS)."""
        if kind not in NOTE_KINDS:
            raise ValueError(f'unknown note kind {kind!r}')
        self.notes[kind] += 1
        self._example(f'{kind}: {where}')

    def _example(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)

    @property
    def total_skipped(self) -> int:
        """Return how many entries were dropped."""
        return sum(self.skipped.values())

    def to_dict(self) -> dict:
        """Return the report as plain data (for stats.json)."""
        return {'source': self.source, 'root': self.root, 'kept': self.kept,
                'skipped': {k: self.skipped.get(k, 0) for k in SKIP_KINDS},
                'notes': {k: self.notes.get(k, 0) for k in NOTE_KINDS},
                'examples': list(self.examples)}

    def summary(self) -> str:
        """Return one line: kept, skipped by kind, notes by kind."""
        skipped = ', '.join(f'{k} {v}' for k, v in sorted(self.skipped.items()) if v)
        notes = ', '.join(f'{k} {v}' for k, v in sorted(self.notes.items()) if v)
        text = f'{self.source}: kept {self.kept}, skipped {self.total_skipped}'
        if skipped:
            text += f' ({skipped})'
        if notes:
            text += f'; notes: {notes}'
        return text

    def log(self) -> None:
        """Log the summary: a warning when anything was skipped or noted."""
        if self.total_skipped or sum(self.notes.values()):
            LOGGER.warning('%s; first problems: %s', self.summary(), '; '.join(self.examples))
        else:
            LOGGER.info(self.summary())


@dataclass
class SourceData:
    """The samples of one data set, its read report, whether it has an official val split."""

    name: str
    samples: List[Sample]
    report: ReadReport
    official_val: bool = False


# --------------------------------------------------------------------------- registry

Reader = Callable[..., SourceData]
READERS: Dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Register a reader ``fn(root, **options) -> SourceData`` under data set `name`.

    The reader's keyword arguments are the keys of ``data.<name>`` in the training
    config (other than ``root``) plus ``verify_images`` and ``progress``.
    """
    def decorate(fn: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f'a data set reader named {name!r} is already registered')
        READERS[name] = fn
        return fn
    return decorate


def read_source(name: str, root: str | Path, **options) -> SourceData:
    """Read data set `name` from `root` with its registered reader."""
    if name not in READERS:
        raise KeyError(f'no reader for data set {name!r}; readers: {", ".join(sorted(READERS))}')
    return READERS[name](root, **options)


# --------------------------------------------------------------------------- helpers

def require_root(name: str, root: str | Path) -> Path:
    """Return `root` as a Path, raising DatasetError naming data.<name>.root if absent."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f'data.{name}.root: folder {path} does not exist')
    return path


def require_file(name: str, path: Path, what: str) -> Path:
    """Return `path`, raising DatasetError naming data.<name>.root when the file is absent."""
    if not path.is_file():
        raise DatasetError(f'data.{name}.root: {what} {path} not found; is the root the '
                           f'folder the data set unpacks to?')
    return path


def csv_rows(handle: IO[str], required: Sequence[str], key: str,
             file_name: str) -> Iterable[Tuple[int, dict]]:
    """Yield (line number, row) of a CSV file whose header must hold `required` columns.

    Header names are stripped of spaces (the files in the wild have irregular spacing);
    a missing column raises DatasetError naming the config key `key`.
    """
    reader = csv.DictReader(handle)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in columns]
    if missing:
        raise DatasetError(f'{key}: {file_name} lacks column(s) '
                           f'{", ".join(missing)}; header is {columns}')
    reader.fieldnames = columns
    return enumerate(reader, start=2)


def image_problem(path: str, verify: bool = True) -> Optional[str]:
    """Return None when `path` is a readable image, else 'missing_image'/'unreadable_image'.

    With `verify`, the image header is opened (cheap: PIL reads no pixels), which
    catches empty files and files that are not images; a file truncated after its
    header is caught when loaded (see CombinedDataset).
    """
    try:
        size = os.stat(path).st_size
    except OSError:
        return 'missing_image'
    if size == 0:
        return 'unreadable_image'
    if not verify:
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - PIL raises many kinds for non-images
        return 'unreadable_image'
    return None if width > 0 and height > 0 else 'unreadable_image'


def check_images(paths: Sequence[str], verify: bool, progress: bool,
                 desc: str) -> Dict[str, Optional[str]]:
    """Return {path: image_problem(path)} for unique `paths`, in parallel threads."""
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 2) * 2)) as pool:
        results = list(tqdm(pool.map(lambda p: image_problem(p, verify), unique, chunksize=64),
                            total=len(unique), desc=desc, unit='img', disable=not progress,
                            leave=False))
    return dict(zip(unique, results))


def keep_readable(candidates: List[Tuple[Sample, str]], report: ReadReport,
                  verify: bool, progress: bool, name: str, folder_key: str) -> List[Sample]:
    """Drop candidates whose image is missing or unreadable (counted), return the rest.

    `candidates` pairs each sample with where it was listed (file:line). Raises
    DatasetError naming `folder_key` when entries were listed but no image exists:
    that is a wrong folder, not bad data.
    """
    problems = check_images([s.path for s, _ in candidates], verify, progress,
                            desc=f'checking {name} images')
    kept = []
    for sample, where in candidates:
        problem = problems[sample.path]
        if problem is None:
            kept.append(sample)
        else:
            report.skip(problem, f'{where} ({sample.path})')
    if candidates and not kept and report.skipped['missing_image'] == len(candidates):
        raise DatasetError(
            f'{folder_key}: none of the {len(candidates)} images listed for {name} exists '
            f'(first: {candidates[0][0].path}); check the folder')
    report.kept = len(kept)
    return kept


def split_unit_interval(seed: int, source: str, group: str) -> float:
    """Return a reproducible number in [0, 1) from (seed, source, group)."""
    digest = hashlib.blake2b(f'{seed}\0{source}\0{group}'.encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'big') / 2.0 ** 64


def assign_splits(samples: Iterable[Sample], val_fraction: float, test_fraction: float,
                  seed: int, official_val: bool) -> List[Sample]:
    """Return samples with their final split (see the module docstring).

    official_val: the data set has an official val split (then 'train' stays 'train').
    """
    result = []
    for sample in samples:
        split = sample.split
        if split is None or (split == 'train' and not official_val):
            u = split_unit_interval(seed, sample.source, sample.group)
            if split is None and u < test_fraction:
                split = 'test'
            elif split is None and u < test_fraction + val_fraction:
                split = 'val'
            elif split == 'train' and u < val_fraction:
                split = 'val'
            else:
                split = 'train'
        elif split not in SPLITS:
            raise ValueError(f'sample {sample.key} of {sample.source} has split {split!r}')
        result.append(sample if split == sample.split else replace(sample, split=split))
    return result


def targets_array(samples: Sequence[Sample]) -> np.ndarray:
    """Return the targets of `samples` as an int64 array of shape (N, len(TASKS))."""
    if not samples:
        return np.zeros((0, len(TASKS)), dtype=np.int64)
    return np.asarray([s.targets for s in samples], dtype=np.int64)


def class_counts(samples: Sequence[Sample]) -> Dict[str, List[int]]:
    """Return {task: [count per class]} over `samples` (unlabelled entries not counted)."""
    targets = targets_array(samples)
    counts = {}
    for t, task in enumerate(TASKS):
        column = targets[:, t]
        column = column[column != IGNORE_INDEX]
        counts[task] = np.bincount(column, minlength=NUM_CLASSES[task]).tolist()
    return counts
