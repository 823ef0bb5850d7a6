"""Zero-shot baseline: classify faces by similarity to class prompts with full PE-Core CLIP.

Every class of every task is described by a small prompt ensemble (templates x phrases,
`config/zero_shot_prompts.yaml`). At build time the text tower embeds all prompts once;
each class's embedding is the renormalised mean of its prompts' normalised embeddings,
kept as a buffer (and optionally cached on disk, keyed by backbone, weights and
prompts), and the text tower is then freed. At run time:

    logits[task] = logit_scale * normalize(visual(images)) @ class_embeddings[task].T
    probabilities = softmax(logits)          # (N, C_task), schema class order
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.backbone import NO_WEIGHTS, OFFLINE_BACKBONE, PECore, load_clip
from soft_biometrics_ros.models.classifier import FaceClassifier

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS_FILE = Path(__file__).resolve().parents[1] / 'config' / 'zero_shot_prompts.yaml'


@dataclass(frozen=True)
class TaskPrompts:
    """Prompt ensemble of one task: templates with one '{}' and phrases per class."""

    templates: Tuple[str, ...]
    classes: Dict[str, Tuple[str, ...]]

    def texts(self, class_name: str) -> List[str]:
        """Return every prompt of class `class_name` (templates x phrases)."""
        return [t.format(p) for t in self.templates for p in self.classes[class_name]]


def _check_task_prompts(task: str, data, source: str) -> TaskPrompts:
    if not isinstance(data, Mapping):
        raise ValueError(f'{source}: prompts.{task} must be a mapping with templates and classes')
    unknown = set(data) - {'templates', 'classes'}
    if unknown:
        raise ValueError(f'{source}: unknown key(s) prompts.{task}.{", ".join(sorted(unknown))}')
    templates = data.get('templates')
    if isinstance(templates, str):
        templates = [templates]
    if not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(f'{source}: prompts.{task}.templates must be a non-empty list of strings')
    for template in templates:
        if template.count('{}') != 1:
            raise ValueError(f'{source}: prompts.{task}.templates entry {template!r} must '
                             f'contain exactly one {{}}')
    classes = data.get('classes')
    if not isinstance(classes, Mapping):
        raise ValueError(f'{source}: prompts.{task}.classes must map class names to phrases')
    expected = labels.CLASSES[task]
    names = [str(k) for k in classes]
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        raise ValueError(
            f'{source}: prompts.{task}.classes must be exactly the schema classes '
            f'{list(expected)}; missing {missing}, unknown {extra}')
    phrases = {}
    for name, value in classes.items():
        value = [value] if isinstance(value, str) else value
        if not value or not all(isinstance(p, str) and p.strip() for p in value):
            raise ValueError(f'{source}: prompts.{task}.classes.{name} must be a non-empty '
                             f'phrase or list of phrases')
        phrases[str(name)] = tuple(value)
    return TaskPrompts(templates=tuple(templates),
                       classes={c: phrases[c] for c in expected})


def load_prompts(source: Union[None, str, Path, Mapping] = None) -> Dict[str, TaskPrompts]:
    """Read and validate prompts: None -> the shipped YAML, a YAML path, or a mapping.

    Every task of the schema needs templates and exactly the schema's classes; errors
    name the offending key.
    """
    if source is None:
        source = DEFAULT_PROMPTS_FILE
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f'zero-shot prompts file {str(path)!r} does not exist')
        with open(path, encoding='utf-8') as handle:
            data = yaml.safe_load(handle)
        where = str(path)
    else:
        data, where = source, 'prompts'
    if not isinstance(data, Mapping):
        raise ValueError(f'{where}: prompts must be a mapping task -> templates/classes')
    missing = [t for t in labels.TASKS if t not in data]
    unknown = [t for t in data if t not in labels.TASKS]
    if missing or unknown:
        raise ValueError(f'{where}: prompts need exactly the tasks {list(labels.TASKS)}; '
                         f'missing {missing}, unknown {unknown}')
    return {task: _check_task_prompts(task, data[task], where) for task in labels.TASKS}


def prompts_fingerprint(prompts: Mapping[str, TaskPrompts]) -> str:
    """Return a short hash of a prompt set (part of the text-embedding cache key)."""
    data = {t: {'templates': list(p.templates), 'classes': {c: list(v) for c, v in
                                                            p.classes.items()}}
            for t, p in prompts.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def encode_class_prompts(clip_model, tokenizer, prompts: Mapping[str, TaskPrompts],
                         device: torch.device, batch_size: int = 256) -> Dict[str, torch.Tensor]:
    """Return task -> class embeddings (C_task, E), unit norm, from the text tower.

    All prompts of all tasks go through the text tower in batches of `batch_size`; a
    class's embedding is the renormalised mean of its prompts' normalised embeddings.
    """
    texts, owners = [], []
    for task in labels.TASKS:
        for index, class_name in enumerate(labels.CLASSES[task]):
            for text in prompts[task].texts(class_name):
                texts.append(text)
                owners.append((task, index))
    encoded = []
    for start in tqdm(range(0, len(texts), batch_size), desc='zero-shot prompts',
                      unit='batch', disable=None):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        encoded.append(clip_model.encode_text(tokens, normalize=True).float())
    encoded = torch.cat(encoded)
    embeddings = {}
    for task in labels.TASKS:
        rows = []
        for index in range(labels.NUM_CLASSES[task]):
            members = [i for i, owner in enumerate(owners) if owner == (task, index)]
            rows.append(F.normalize(encoded[members].mean(dim=0), dim=-1))
        embeddings[task] = torch.stack(rows)
    return embeddings


def _weights_identity(pe_core: PECore) -> Optional[str]:
    """Return a string identifying the loaded weights file, None for random weights."""
    if pe_core.weights_file is None:
        return None
    path = Path(pe_core.weights_file).resolve()
    stat = path.stat()
    return f'{path}:{stat.st_size}:{stat.st_mtime_ns}'


class ZeroShotClassifier(FaceClassifier):
    """Full PE-Core CLIP used zero-shot: cosine similarity to cached class-prompt embeddings.

    visual: images (N, 3, S, S) -> embeddings (N, E). Buffers `class_embeddings_<task>`
    (C_task, E) unit-norm and `logit_scale` (scalar, exp of CLIP's learned log scale).
    """

    def __init__(self, pe_core: PECore, prompts: Mapping[str, TaskPrompts],
                 cache_dir: Optional[Union[str, Path]] = None):
        super().__init__(pe_core.name, pe_core.preprocess, pe_core.untrained)
        clip_model = pe_core.model
        self.pretrained = pe_core.pretrained
        self.parameter_counts = pe_core.parameter_counts
        self.prompts = dict(prompts)
        device = next(clip_model.parameters()).device
        embeddings = self._cached_embeddings(pe_core, cache_dir)
        if embeddings is None:
            tokenizer = open_clip.get_tokenizer(pe_core.name)
            embeddings = encode_class_prompts(clip_model, tokenizer, self.prompts, device)
            self._store_embeddings(pe_core, cache_dir, embeddings)
        for task in labels.TASKS:
            self.register_buffer(f'class_embeddings_{task}', embeddings[task].to(device))
        self.register_buffer('logit_scale', clip_model.logit_scale.detach().exp().reshape(()))
        self.visual = clip_model.visual  # the text tower is freed with clip_model

    def class_embeddings(self, task: str) -> torch.Tensor:
        """Return the unit-norm class embeddings (C_task, E) of `task`."""
        return getattr(self, f'class_embeddings_{task}')

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map images (N, 3, S, S) to task -> logits (N, C_task) = scale x cosine."""
        image = F.normalize(self.visual(images), dim=-1)
        return {task: self.logit_scale * image @ self.class_embeddings(task).to(image.dtype).T
                for task in labels.TASKS}

    def _cache_file(self, pe_core: PECore, cache_dir) -> Optional[Path]:
        identity = _weights_identity(pe_core)
        if cache_dir is None or identity is None:
            return None  # random weights change every build: nothing to reuse
        key = json.dumps([pe_core.name, identity, prompts_fingerprint(self.prompts),
                          open_clip.__version__])
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return Path(cache_dir) / 'zero_shot_text' / f'{pe_core.name}-{digest}.safetensors'

    def _cached_embeddings(self, pe_core: PECore, cache_dir) -> Optional[Dict[str, torch.Tensor]]:
        path = self._cache_file(pe_core, cache_dir)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file
        try:
            stored = load_file(str(path))
        except Exception as error:  # a corrupt cache entry is recomputed
            logger.warning('ignoring unreadable text-embedding cache %s: %s', path, error)
            return None
        if set(stored) != set(labels.TASKS):
            return None
        logger.info('zero-shot text embeddings read from cache %s', path)
        return stored

    def _store_embeddings(self, pe_core: PECore, cache_dir, embeddings) -> None:
        path = self._cache_file(pe_core, cache_dir)
        if path is None:
            return
        from safetensors.torch import save_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix('.tmp')
        save_file({t: e.detach().cpu().contiguous() for t, e in embeddings.items()}, str(tmp))
        tmp.replace(path)


def build_zero_shot_classifier(backbone: str = OFFLINE_BACKBONE,
                               pretrained: Optional[str] = NO_WEIGHTS,
                               prompts: Union[None, str, Path, Mapping] = None,
                               device: Union[str, torch.device] = 'cpu',
                               cache_dir: Optional[Union[str, Path]] = None) -> ZeroShotClassifier:
    """Build the zero-shot classifier on `device` (prompts validated before any model build).

    cache_dir: hub cache for weights and where text embeddings of real (non-random)
    weights are cached.
    """
    task_prompts = load_prompts(prompts)
    pe_core = load_clip(backbone, pretrained, device=device,
                        cache_dir=str(cache_dir) if cache_dir else None)
    return ZeroShotClassifier(pe_core, task_prompts, cache_dir=cache_dir).eval()
