"""The label schema: the three tasks and their classes, one source of truth.

Every part of the package (model heads, training data readers, losses, the node's
messages, the evaluation) takes class names and orders from here.

| task    | classes (model order)                                                  |
| ------- | ---------------------------------------------------------------------- |
| age     | 0-2, 3-9, 10-19, 20-29, 30-39, 40-49, 50-59, 60-69, 70+ (FairFace's)   |
| gender  | female, male                                                           |
| emotion | surprised, scared, disgusted, happy, sad, angry, neutral (RAF-DB order, |
|         | named as ROS4HRI's hri_msgs/Expression names them)                     |
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

TASKS: Tuple[str, ...] = ('age', 'gender', 'emotion')

AGE_GROUPS: Tuple[str, ...] = (
    '0-2', '3-9', '10-19', '20-29', '30-39', '40-49', '50-59', '60-69', '70+')
# Inclusive lower bound of each age group in years; the last group is open.
AGE_GROUP_LOWER_BOUNDS: Tuple[int, ...] = (0, 3, 10, 20, 30, 40, 50, 60, 70)
# Representative age of each group, used for the expected age in years. The open
# group 70+ is represented by 77 (its typical member in FairFace and LAGENDA).
AGE_GROUP_MIDPOINTS: Tuple[float, ...] = (1.0, 6.0, 14.5, 24.5, 34.5, 44.5, 54.5, 64.5, 77.0)

GENDERS: Tuple[str, ...] = ('female', 'male')

# RAF-DB basic labels 1..7 are Surprise, Fear, Disgust, Happiness, Sadness, Anger,
# Neutral: index i here is RAF-DB label i + 1.
EMOTIONS: Tuple[str, ...] = (
    'surprised', 'scared', 'disgusted', 'happy', 'sad', 'angry', 'neutral')

CLASSES: Dict[str, Tuple[str, ...]] = {
    'age': AGE_GROUPS,
    'gender': GENDERS,
    'emotion': EMOTIONS,
}

NUM_CLASSES: Dict[str, int] = {task: len(names) for task, names in CLASSES.items()}

# Target value of a task a sample carries no label for; ignored by the loss.
IGNORE_INDEX = -1

SCHEMA_VERSION = 1


def age_to_group_index(years: float) -> int:
    """Return the index in AGE_GROUPS of an age in years (negative ages are invalid)."""
    if years is None or not np.isfinite(years) or years < 0:
        raise ValueError(f'age must be a finite number of years >= 0, got {years!r}')
    index = 0
    for i, lower in enumerate(AGE_GROUP_LOWER_BOUNDS):
        if years >= lower:
            index = i
    return index


def age_group_index(group: str) -> int:
    """Return the index of an age group name such as '20-29' or '70+'."""
    return _index('age', group)


def class_index(task: str, name: str) -> int:
    """Return the index of class `name` of `task`, with a clear error when unknown."""
    return _index(task, name)


def _index(task: str, name: str) -> int:
    if task not in CLASSES:
        raise KeyError(f'unknown task {task!r}; tasks are {", ".join(TASKS)}')
    try:
        return CLASSES[task].index(name)
    except ValueError:
        raise KeyError(
            f'unknown {task} class {name!r}; classes are {", ".join(CLASSES[task])}') from None


def expected_age(probabilities: Sequence[float] | np.ndarray) -> np.ndarray | float:
    """Return the expected age in years: sum over groups of probability x group midpoint.

    Accepts one probability vector of shape (9,) (returns a float) or a batch of
    shape (N, 9) (returns an array of shape (N,)).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape[-1] != len(AGE_GROUPS):
        raise ValueError(
            f'expected {len(AGE_GROUPS)} age-group probabilities, got shape {probs.shape}')
    years = probs @ np.asarray(AGE_GROUP_MIDPOINTS)
    return float(years) if np.ndim(years) == 0 else years


def schema_dict() -> dict:
    """Return the schema as plain data, as stored in checkpoint manifests."""
    return {'version': SCHEMA_VERSION, 'tasks': {t: list(CLASSES[t]) for t in TASKS}}


def schema_fingerprint(schema: Optional[dict] = None) -> str:
    """Return a short hash of a schema dict (the current schema by default)."""
    data = json.dumps(schema if schema is not None else schema_dict(), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def check_schema(schema: dict, source: str = 'checkpoint') -> None:
    """Raise ValueError naming both sides when `schema` differs from this package's."""
    ours = schema_dict()
    if schema.get('tasks') != ours['tasks']:
        raise ValueError(
            f'{source} label schema {schema.get("tasks")} does not match this package\'s '
            f'schema {ours["tasks"]}; it was trained for other classes')
