"""Training configuration: one table of keys with defaults and checks, YAML loading, overrides.

Every ``python -m training <command>`` reads one YAML file and applies dotted overrides
(``train.batch_size=8 method.name=dora``) on top of it. The keys, their defaults and
their checks live in one table, :data:`OPTIONS`; adding a key is adding one line there.
A loaded configuration is validated as a whole: unknown keys and bad values are
rejected with a :class:`ConfigError` that names the key ("train.batch_size must be a
positive integer, got -3"; "unknown key train.batchsize (did you mean
train.batch_size?)").

The result is a read-only :class:`Config` with attribute access by section
(``cfg.train.batch_size``, ``cfg.data.rafdb.root``) or dotted item access
(``cfg['train.batch_size']``); :meth:`Config.updated` returns a validated copy with some
keys changed (``compare`` uses it to run each method).

Keys whose value is a free mapping (``method.options``, ``loss.weights``) accept
nested overrides too: ``method.options.rank=16``.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from soft_biometrics_ros.labels import TASKS
from soft_biometrics_ros.suggest import suggest_name

__all__ = ['ConfigError', 'Config', 'Option', 'OPTIONS', 'METHOD_NAMES', 'DATASET_NAMES',
           'load_config', 'make_config', 'parse_overrides', 'default_config',
           'check_method', 'check_data_roots', 'suggest_name']


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names the key."""


# The adaptation methods of DESIGN.md step 3 (the adapter registry of
# soft_biometrics_ros.models.adapters validates their options when it builds them).
METHOD_NAMES: Tuple[str, ...] = (
    'linear_probe', 'partial', 'lora', 'dora', 'loraplus', 'mtlora')
# The data sets with a reader in training.datasets; a data set without a root is not used.
DATASET_NAMES: Tuple[str, ...] = ('rafdb', 'fairface', 'lagenda', 'celeba_hq')
# The folder each data set unpacks to, for the examples of error messages.
_EXAMPLE_ROOTS: Dict[str, str] = {
    'rafdb': '/data/RAF-DB/basic', 'fairface': '/data/FairFace', 'lagenda': '/data/LAGENDA',
    'celeba_hq': '/data/CelebAMask-HQ'}
LOSS_STRATEGIES: Tuple[str, ...] = ('fixed', 'uncertainty', 'dwa', 'gradnorm')
PRECISIONS: Tuple[str, ...] = ('fp32', 'bf16', 'fp16')

Check = Callable[[str, Any], Any]


def accepts(text: str) -> Callable[[Check], Check]:
    """Return a decorator recording `text` (what a check accepts) on the check."""
    def decorate(check: Check) -> Check:
        check.accepts = text
        return check
    return decorate


# --------------------------------------------------------------------------- checks
# Each check takes (key, value) and returns the normalised value or raises ConfigError.

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(key: str, value: Any, what: str) -> float:
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; accept numeric strings for floats.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f'{key} must be {what}, got {value!r}') from None
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(f'{key} must be {what}, got {value!r}')
    return float(value)


@accepts('an integer')
def integer(key: str, value: Any) -> int:
    """Check that `value` is an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f'{key} must be an integer, got {value!r}')
    return value


@accepts('an integer >= 1')
def positive_int(key: str, value: Any) -> int:
    """Check that `value` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'{key} must be a positive integer, got {value!r}')
    return value


@accepts('an integer >= 0')
def non_negative_int(key: str, value: Any) -> int:
    """Check that `value` is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f'{key} must be an integer >= 0, got {value!r}')
    return value


@accepts('a number > 0')
def positive_float(key: str, value: Any) -> float:
    """Check that `value` is a number > 0."""
    number = _as_float(key, value, 'a number > 0')
    if number <= 0:
        raise ConfigError(f'{key} must be a number > 0, got {value!r}')
    return number


@accepts('a number >= 0')
def non_negative_float(key: str, value: Any) -> float:
    """Check that `value` is a number >= 0."""
    number = _as_float(key, value, 'a number >= 0')
    if number < 0:
        raise ConfigError(f'{key} must be a number >= 0, got {value!r}')
    return number


def fraction(low: float, high: float, high_inclusive: bool = False) -> Check:
    """Return a check for a number in [low, high) (or [low, high])."""
    what = f'a number in [{low:g}, {high:g}{"]" if high_inclusive else ")"}'

    def check(key: str, value: Any) -> float:
        number = _as_float(key, value, what)
        if number < low or number > high or (number == high and not high_inclusive):
            raise ConfigError(f'{key} must be {what}, got {value!r}')
        return number
    check.accepts = what
    return check


@accepts('true or false')
def boolean(key: str, value: Any) -> bool:
    """Check that `value` is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f'{key} must be true or false, got {value!r}')
    return value


@accepts('a non-empty string')
def string(key: str, value: Any) -> str:
    """Check that `value` is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f'{key} must be a non-empty string, got {value!r}')
    return value


def choice(*names: str) -> Check:
    """Return a check for one of `names`."""
    def check(key: str, value: Any) -> str:
        if value not in names:
            hint = _did_you_mean(str(value), names)
            raise ConfigError(f'{key} must be one of {", ".join(names)}, got {value!r}{hint}')
        return value
    check.accepts = 'one of ' + ', '.join(names)
    return check


def optional(inner: Check) -> Check:
    """Return a check that accepts null (None) or what `inner` accepts."""
    def check(key: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner(key, value)
        except ConfigError as error:
            raise ConfigError(f'{error} (or null)') from None
    check.accepts = f'null or {getattr(inner, "accepts", "a value")}'
    return check


@accepts('null (not used) or a folder')
def folder(key: str, value: Any) -> Optional[str]:
    """Check that `value` is null (not used) or a folder."""
    if value is None or value == '':
        return None
    if not isinstance(value, (str, Path)):
        raise ConfigError(f'{key} must be a folder path or null, got {value!r}')
    return str(Path(value).expanduser())


@accepts("a folder relative to the root ('' = root)")
def relative_folder(key: str, value: Any) -> str:
    """Check that `value` is a folder relative to the root ('' = root)."""
    if value is None:
        return ''
    if not isinstance(value, str) or Path(value).is_absolute():
        raise ConfigError(f'{key} must be a folder relative to the data set root, got {value!r}')
    return value


def range_pair(low: float, high: float) -> Check:
    """Return a check for [a, b] with low <= a <= b <= high."""
    def check(key: str, value: Any) -> List[float]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f'{key} must be a pair [min, max], got {value!r}')
        a = _as_float(key, value[0], f'a pair of numbers in [{low:g}, {high:g}]')
        b = _as_float(key, value[1], f'a pair of numbers in [{low:g}, {high:g}]')
        if not low <= a <= b <= high:
            raise ConfigError(
                f'{key} must be a pair [min, max] with {low:g} <= min <= max <= {high:g}, '
                f'got {value!r}')
        return [a, b]
    check.accepts = f'a pair [min, max] within [{low:g}, {high:g}]'
    return check


@accepts('a mapping')
def free_mapping(key: str, value: Any) -> Dict[str, Any]:
    """Check that `value` is a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f'{key} must be a mapping of names to values, got {value!r}')
    return copy.deepcopy(dict(value))


@accepts('a mapping task -> weight >= 0')
def task_weights(key: str, value: Any) -> Dict[str, float]:
    """Check that `value` is a mapping task -> weight >= 0."""
    mapping = free_mapping(key, value)
    weights = {task: 1.0 for task in TASKS}
    for task, weight in mapping.items():
        if task not in TASKS:
            raise ConfigError(f'unknown task {key}.{task}; tasks are {", ".join(TASKS)}'
                              f'{_did_you_mean(task, TASKS)}')
        weights[task] = non_negative_float(f'{key}.{task}', weight)
    return weights


@accepts('a method name')
def method_name(key: str, value: Any) -> str:
    """Check that `value` is a method name."""
    return choice(*METHOD_NAMES)(key, value)


@accepts('a list of method names')
def method_list(key: str, value: Any) -> List[str]:
    """Check that `value` is a list of method names."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f'{key} must be a non-empty list of method names, got {value!r}')
    names = [method_name(f'{key}[{i}]', name) for i, name in enumerate(value)]
    if len(set(names)) != len(names):
        raise ConfigError(f'{key} lists a method twice: {names}')
    return names


_DEVICE = re.compile(r'^(cpu|cuda(:\d+)?|mps)$')


@accepts('cpu, cuda, cuda:N or mps')
def device_name(key: str, value: Any) -> str:
    """Check that `value` is cpu, cuda, cuda:N or mps."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ConfigError(f'{key} must be cpu, cuda, cuda:N or mps, got {value!r}')
    return value


@accepts('an open_clip PE-Core model name')
def backbone_name(key: str, value: Any) -> str:
    """Check that `value` is an open_clip PE-Core model name."""
    name = string(key, value)
    known = _open_clip_model_names()
    if known and name not in known:
        pe_names = sorted(n for n in known if n.startswith('PE-Core'))
        raise ConfigError(f'{key} must name an open_clip model such as '
                          f'{", ".join(pe_names)}, got {value!r}{_did_you_mean(name, known)}')
    return name


def _open_clip_model_names() -> Tuple[str, ...]:
    # Read open_clip's config folder instead of importing it (which imports torch):
    # config validation stays fast for every command.
    spec = importlib.util.find_spec('open_clip')
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder_path = Path(list(spec.submodule_search_locations)[0]) / 'model_configs'
    return tuple(sorted(p.stem for p in folder_path.glob('*.json')))


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Option:
    """One configuration key: dotted path, default value, check and a one-line help."""

    path: str
    default: Any
    check: Check
    help: str


OPTIONS: Tuple[Option, ...] = (
    Option('output_dir', None, optional(string),
           'folder for every output of the command; null = runs/<config file name>'),
    # Data sets: a data set without a root is not used.
    Option('data.rafdb.root', None, folder, 'RAF-DB "basic" folder (EmoLabel/, Image/, ...)'),
    Option('data.rafdb.images', 'aligned', choice('aligned', 'original'),
           'Image/aligned/*_aligned.jpg (faces, as the node crops them) or Image/original/'),
    Option('data.rafdb.manual_attributes', True, boolean,
           'read gender (and 70+ age) from Annotation/manual/*_manu_attri.txt'),
    Option('data.rafdb.age_70_plus', False, boolean,
           'label RAF-DB 70+ faces with age group 70+ (off: RAF-DB carries no age, '
           'see training/datasets/rafdb.py)'),
    Option('data.fairface.root', None, folder,
           'FairFace folder with fairface_label_{train,val}.csv'),
    Option('data.fairface.image_dir', '', relative_folder,
           'folder (relative to root) the csv file column is relative to; '
           "'' = root, else fairface-img-margin025-trainval/ when present"),
    Option('data.lagenda.root', None, folder, 'LAGENDA folder with lagenda_annotation.csv'),
    Option('data.lagenda.image_dir', '', relative_folder,
           'folder (relative to root) img_name is relative to'),
    Option('data.lagenda.face_margin', 0.2, fraction(0.0, 2.0, True),
           'face crop margin on every side, as a fraction of the box\'s longer side, as '
           'the node crops faces (keep equal to the node\'s margin)'),
    Option('data.celeba_hq.root', None, folder,
           'CelebAMask-HQ folder with CelebAMask-HQ-attribute-anno.txt and CelebA-HQ-img/'),
    Option('data.celeba_hq.official_split', True, boolean,
           "use CelebA's train/val/test split through CelebA-HQ-to-CelebA-mapping.txt "
           'when present'),
    Option('data.emotion_fraction', 1.0 / 3.0, optional(fraction(0.0, 1.0)),
           'emotion-labelled samples duplicated until they are this share of the training '
           'set (null: no oversampling)'),
    Option('data.sampler', 'balanced', choice('balanced', 'uniform'),
           'balanced: draw by mean inverse class frequency; uniform: every sample alike'),
    Option('data.val_fraction', 0.1, fraction(0.0, 1.0),
           'share of training images carved (seeded) into val where a data set has no val'),
    Option('data.test_fraction', 0.1, fraction(0.0, 1.0),
           'share carved into test where a data set has no official split (LAGENDA)'),
    Option('data.seed', 0, integer, 'seed of the carved splits and the emotion oversampling'),
    Option('data.num_workers', 4, non_negative_int, 'DataLoader worker processes'),
    Option('data.image_size', None, optional(positive_int),
           "model input side in pixels; null = the backbone's"),
    Option('data.verify_images', True, boolean,
           'open every image header while reading (unreadable files skipped and counted)'),
    Option('data.augment.hflip', 0.5, fraction(0.0, 1.0, True), 'horizontal flip probability'),
    Option('data.augment.crop_scale', [0.8, 1.0], range_pair(0.05, 1.0),
           'random resized crop: area share range'),
    Option('data.augment.crop_ratio', [0.9, 1.1], range_pair(0.25, 4.0),
           'random resized crop: aspect ratio range'),
    Option('data.augment.color_jitter', 0.2, fraction(0.0, 1.0, True),
           'brightness/contrast/saturation jitter strength (hue: a tenth of it); 0 = off'),
    # Model and method.
    Option('model.backbone', 'PE-Core-L-14-336', backbone_name, 'open_clip PE-Core model name'),
    Option('model.pretrained', 'meta', string,
           "'meta' (open_clip hub tag), a local weights file, or 'none' (random init)"),
    Option('method.name', 'linear_probe', method_name, 'adaptation method'),
    Option('method.options', {}, free_mapping,
           "the method's config fields (rank, alpha, ...), checked by its adapter"),
    # Loss.
    Option('loss.strategy', 'uncertainty', choice(*LOSS_STRATEGIES),
           'multitask loss balancing'),
    Option('loss.weights', {task: 1.0 for task in TASKS}, task_weights,
           'per-task weights (fixed strategy; initial weights otherwise)'),
    Option('loss.label_smoothing', 0.0, fraction(0.0, 1.0), 'cross-entropy label smoothing'),
    Option('loss.dwa_temperature', 2.0, positive_float, 'temperature T of the dwa strategy'),
    Option('loss.gradnorm_alpha', 1.5, non_negative_float,
           'asymmetry alpha of the gradnorm strategy'),
    Option('loss.balancer_lr', None, optional(positive_float),
           'learning rate of learned loss weights (uncertainty, gradnorm); null = train.lr'),
    # Training.
    Option('train.epochs', 10, positive_int, 'epochs (an epoch = train.samples_per_epoch draws)'),
    Option('train.max_steps', None, optional(positive_int),
           'stop after this many optimiser steps (null: train.epochs decides)'),
    Option('train.batch_size', 64, positive_int, 'samples per step and process'),
    Option('train.lr', 1e-3, positive_float, 'peak learning rate'),
    Option('train.weight_decay', 0.05, non_negative_float, 'AdamW weight decay'),
    Option('train.warmup_steps', 500, non_negative_int, 'linear warm-up steps before cosine'),
    Option('train.grad_accum', 1, positive_int, 'batches accumulated per optimiser step'),
    Option('train.grad_clip', 1.0, optional(positive_float),
           'gradient norm clip (null: off)'),
    Option('train.precision', 'bf16', choice(*PRECISIONS),
           'autocast precision on CUDA (CPU runs fp32)'),
    Option('train.device', 'cuda', device_name, 'cuda falls back to cpu with a warning'),
    Option('train.samples_per_epoch', None, optional(positive_int),
           'draws per epoch (all ranks together); null = training set size'),
    Option('train.seed', 0, integer, 'seed of model init and of the sampler draws'),
    Option('train.log_every', 50, positive_int, 'log every N optimiser steps'),
    Option('train.eval_every', None, optional(positive_int),
           'validate every N optimiser steps too (null: at the end of each epoch only)'),
    Option('train.save_every', 500, optional(positive_int),
           'save checkpoints/last (with the resume state) every N optimiser steps '
           '(null: at the end of each epoch only)'),
    Option('train.resume', True, boolean,
           'continue from output_dir/checkpoints/last when it exists'),
    # Evaluation.
    Option('eval.split', 'test', choice('val', 'test'), 'split that evaluate reports'),
    Option('eval.batch_size', 128, positive_int, 'evaluation batch size'),
    Option('eval.max_samples', None, optional(positive_int),
           'evaluate at most this many samples (null: all)'),
    # Compare.
    Option('compare.methods', list(METHOD_NAMES), method_list, 'methods in the study table'),
    # Stats.
    Option('stats.draws', 200000, positive_int,
           'sampler draws that confirm the exact weighted shares'),
)

OPTION_BY_PATH: Dict[str, Option] = {option.path: option for option in OPTIONS}
# Keys whose value is a free mapping: overrides may reach inside them.
MAPPING_PATHS = frozenset(o.path for o in OPTIONS if o.check in (free_mapping, task_weights))
SECTIONS = frozenset(
    '.'.join(option.path.split('.')[:i])
    for option in OPTIONS for i in range(1, option.path.count('.') + 1))
if len(OPTION_BY_PATH) != len(OPTIONS) or SECTIONS & set(OPTION_BY_PATH):  # pragma: no cover
    raise RuntimeError('training.config.OPTIONS has a duplicate key or a key that is a section')


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    match = suggest_name(name, candidates)
    return f' (did you mean {match}?)' if match else ''


def _unknown_key(path: str) -> ConfigError:
    hint = _did_you_mean(path, list(OPTION_BY_PATH) + sorted(SECTIONS))
    if not hint:
        section = path.rsplit('.', 1)[0] if '.' in path else ''
        siblings = sorted(p for p in OPTION_BY_PATH if p.startswith(section + '.')) if section \
            else sorted({p.split('.')[0] for p in OPTION_BY_PATH})
        hint = f'; known keys here: {", ".join(siblings)}' if siblings else ''
    return ConfigError(f'unknown key {path}{hint}')


# --------------------------------------------------------------------------- tree helpers

def _set(tree: dict, path: str, value: Any) -> None:
    parts = path.split('.')
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _get(tree: Mapping, path: str) -> Any:
    node: Any = tree
    for part in path.split('.'):
        node = node[part]
    return node


def default_config() -> dict:
    """Return the nested dict of every key at its default (a fresh copy)."""
    tree: dict = {}
    for option in OPTIONS:
        _set(tree, option.path, copy.deepcopy(option.default))
    return tree


def _flatten_user(tree: Any, prefix: str = '') -> Dict[str, Any]:
    """Flatten a user YAML tree to {dotted key: value}, rejecting unknown keys."""
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        where = prefix or 'the configuration'
        keys = sorted({p[len(prefix) + 1:].split('.')[0] for p in OPTION_BY_PATH
                       if p.startswith(prefix + '.')}) if prefix else []
        raise ConfigError(f'{where} must be a mapping' + (f' of {", ".join(keys)}' if keys
                                                          else '') + f', got {tree!r}')
    flat: Dict[str, Any] = {}
    for name, value in tree.items():
        if not isinstance(name, str):
            raise ConfigError(f'key {name!r} under {prefix or "the top level"} is not a name')
        path = f'{prefix}.{name}' if prefix else name
        if path in OPTION_BY_PATH:
            flat[path] = value
        elif path in SECTIONS:
            flat.update(_flatten_user(value, path))
        else:
            raise _unknown_key(path)
    return flat


def _resolve_override_path(path: str) -> Tuple[str, Optional[str]]:
    """Return (option path, inner path inside a free mapping or None)."""
    if path in OPTION_BY_PATH:
        return path, None
    for mapping_path in MAPPING_PATHS:
        if path.startswith(mapping_path + '.'):
            return mapping_path, path[len(mapping_path) + 1:]
    if path in SECTIONS:
        raise ConfigError(f'{path} is a section; override one of its keys '
                          f'({", ".join(p for p in OPTION_BY_PATH if p.startswith(path + "."))})')
    raise _unknown_key(path)


def parse_overrides(overrides: Sequence[str]) -> List[Tuple[str, Any]]:
    """Parse ``key.path=value`` strings; values are YAML scalars (or flow collections)."""
    parsed = []
    for text in overrides:
        if '=' not in text:
            raise ConfigError(f'override {text!r} must look like key.path=value '
                              '(e.g. train.batch_size=8)')
        key, raw = text.split('=', 1)
        key = key.strip()
        if not key:
            raise ConfigError(f'override {text!r} has no key before "="')
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f'override {key}: value {raw!r} is not valid YAML ({error})') \
                from None
        parsed.append((key, value))
    return parsed


# --------------------------------------------------------------------------- Config

class Config:
    """A validated, read-only training configuration (or one section of it).

    ``cfg.train.batch_size`` and ``cfg['train.batch_size']`` read a key; sections are
    ``Config`` views; free mappings come back as plain dict copies.
    """

    __slots__ = ('_tree', '_prefix', '_source')

    def __init__(self, tree: dict, prefix: str = '', source: Optional[str] = None):
        self._tree = tree
        self._prefix = prefix
        self._source = source

    @property
    def source(self) -> Optional[str]:
        """Return the YAML file this configuration came from (None when built in code)."""
        return self._source

    def _full(self, name: str) -> str:
        return f'{self._prefix}.{name}' if self._prefix else name

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(error.args[0]) from None

    def __getitem__(self, key: str) -> Any:
        path = self._full(key)
        if path in SECTIONS:
            return Config(_get(self._tree, key), path, self._source)
        if path in OPTION_BY_PATH:
            return copy.deepcopy(_get(self._tree, key))
        raise KeyError(f'no configuration key {path}')

    def __contains__(self, key: str) -> bool:
        return self._full(key) in SECTIONS or self._full(key) in OPTION_BY_PATH

    def __iter__(self):
        return iter(self._tree)

    def keys(self):
        """Return the names in this section."""
        return self._tree.keys()

    def get(self, key: str, default: Any = None) -> Any:
        """Return a key (dotted, relative to this section) or `default` when unknown."""
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict:
        """Return this section as a plain nested dict (a deep copy)."""
        return copy.deepcopy(self._tree)

    def to_yaml(self) -> str:
        """Return this section as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the whole resolved configuration as YAML to `path` and return it."""
        if self._prefix:
            raise ValueError('save() writes whole configurations, not a section')
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def updated(self, changes: Mapping[str, Any] | Sequence[str]) -> 'Config':
        """Return a validated copy with `changes` applied.

        `changes` is a mapping {dotted key: value} or a list of ``key=value`` strings.
        """
        if self._prefix:
            raise ValueError('updated() applies to whole configurations, not a section')
        pairs = parse_overrides(changes) if not isinstance(changes, Mapping) \
            else list(changes.items())
        tree = self.to_dict()
        _apply_pairs(tree, pairs)
        return Config(_validate(tree), source=self._source)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._tree == other._tree

    def __repr__(self) -> str:
        where = f' {self._prefix}' if self._prefix else ''
        return f'Config{where}({self._tree!r})'


def _apply_pairs(tree: dict, pairs: Iterable[Tuple[str, Any]]) -> None:
    for key, value in pairs:
        option_path, inner = _resolve_override_path(key)
        if inner is None:
            _set(tree, option_path, value)
        else:
            mapping = _get(tree, option_path)
            if not isinstance(mapping, dict):
                mapping = {}
                _set(tree, option_path, mapping)
            _set(mapping, inner, value)


def _validate(tree: dict) -> dict:
    for option in OPTIONS:
        _set(tree, option.path, option.check(option.path, _get(tree, option.path)))
    return tree


def make_config(data: Optional[Mapping] = None, overrides: Sequence[str] = (),
                source: Optional[str] = None) -> Config:
    """Build a validated Config from a nested mapping (e.g. parsed YAML) and overrides."""
    tree = default_config()
    flat = _flatten_user(data)
    for path, value in flat.items():
        _set(tree, path, copy.deepcopy(value))
    _apply_pairs(tree, parse_overrides(overrides))
    tree = _validate(tree)
    if tree['output_dir'] is None:
        stem = Path(source).stem if source else 'default'
        tree['output_dir'] = str(Path('runs') / stem)
    _check_together(tree)
    return Config(tree, source=source)


def _check_together(tree: dict) -> None:
    """Check what single keys cannot: the split fractions' sum, output_dir on disk."""
    val, test = _get(tree, 'data.val_fraction'), _get(tree, 'data.test_fraction')
    if val + test >= 1.0:
        raise ConfigError(
            f'data.val_fraction + data.test_fraction must be < 1 (the rest is the training '
            f'set), got {val:g} + {test:g} = {val + test:g}')
    output = Path(tree['output_dir']).expanduser()
    for folder in (output, *output.parents):
        if folder.exists():
            if not folder.is_dir():
                what = 'is' if folder == output else f'lies in {folder}, which is'
                raise ConfigError(f'output_dir {output} {what} a file, not a folder: pass a '
                                  'folder (it is created when missing)')
            break


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML configuration file, apply ``key=value`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f'config file {path} is not valid YAML: {error}') from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f'config file {path} must hold a mapping of sections, '
                          f'got {type(data).__name__}')
    return make_config(data, overrides, source=str(path))


def check_data_roots(cfg: Config) -> List[str]:
    """Check that at least one data set is configured and every configured root exists.

    Cheap (no files are read), so commands call it before they build a model or
    download weights. Returns the configured data set names; raises ConfigError naming
    each bad ``data.<name>.root`` with the absolute path it looked at and how to point
    it elsewhere or leave the data set out.
    """
    names = [name for name in DATASET_NAMES if cfg.data[name].root]
    if not names:
        raise ConfigError('no data set configured: set at least one of '
                          + ', '.join(f'data.{n}.root' for n in DATASET_NAMES)
                          + ' (e.g. data.rafdb.root=/data/RAF-DB/basic)')
    problems, bad, relative = [], [], False
    for name in names:
        root = Path(cfg.data[name].root).expanduser()
        if root.is_dir():
            continue
        what = 'is not a folder' if root.exists() else 'does not exist'
        problems.append(f'data.{name}.root: folder {root.absolute()} {what}')
        bad.append(name)
        relative = relative or not root.is_absolute()
    if not problems:
        return names
    text = '; '.join(problems)
    if relative:
        text += f' (relative roots are read from the current folder {Path.cwd()})'
    raise ConfigError(
        f'{text}. Point each at the folder its data set unpacks to (in '
        f'{cfg.source or "the config"} or on the command line, e.g. '
        f'data.{bad[0]}.root={_EXAMPLE_ROOTS[bad[0]]}), or leave a data set out with '
        f'data.{bad[0]}.root=null')


def check_method(cfg: Config) -> None:
    """Validate ``method.name``/``method.options`` and ``compare.methods`` with the registry.

    Uses soft_biometrics_ros.models.adapters (its config dataclasses name the bad field);
    that imports torch and peft, so only commands that build models call this (the CLI
    does for ``train`` and ``compare``). Raises ConfigError naming the key.
    """
    from soft_biometrics_ros.models.adapters import list_methods, method_config

    registered = list_methods()
    for key, names in (('method.name', [cfg.method.name]), ('compare.methods',
                                                            cfg.compare.methods)):
        for name in names:
            if name not in registered:
                raise ConfigError(f'{key}: method {name!r} is not in the adapter registry '
                                  f'({", ".join(registered)})')
    try:
        method_config(cfg.method.name, cfg.method.options)
    except (ValueError, TypeError) as error:
        raise ConfigError(f'method.options (method {cfg.method.name}): {error}') from None


def describe_options() -> str:
    """Return a Markdown table of every key, its default and what it accepts."""
    lines = ['| key | default | accepts | meaning |', '| --- | --- | --- | --- |']
    for option in OPTIONS:
        accepts = getattr(option.check, 'accepts', '')
        lines.append(f'| `{option.path}` | `{option.default!r}` | {accepts} | {option.help} |')
    return '\n'.join(lines)
