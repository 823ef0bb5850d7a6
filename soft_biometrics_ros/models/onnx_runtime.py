"""The classifier in ONNX Runtime on the CPU: one exported graph per model, cached.

`create_classifier` (models.factory) calls `onnx_classifier` when the `runtime` setting
resolves to onnxruntime (`resolve_runtime`: `onnxruntime`, or `auto` on a CPU device
with the package installed). The inference model as torch would run it (backbone with
its adapters already merged, MTLoRA's per-task streams, the heads; or zero-shot's image
tower with the text-embedding classifier) is exported once with `torch.onnx.export`
(TorchScript exporter, opset 18, dynamic batch axis) to a graph whose outputs are the
three tasks' probabilities, and run by an `onnxruntime.InferenceSession`
(CPUExecutionProvider, intra-op threads = torch's, idle threads sleep).

The graph is cached, keyed by a hash of every weight and of the module structure, and
by the torch (exporter) and onnxruntime versions:

- a checkpoint's graph lives in the checkpoint folder, `onnx/classifier-<key>.onnx`
  (a read-only checkpoint falls back to the user cache); zero-shot's in the user cache,
  `$XDG_CACHE_HOME/soft_biometrics_ros/onnx` (or the `cache_dir` given), one per
  architecture. Zero-shot on random weights (a new draw every build) is never cached.
- `<graph>.json` beside it records the key and the graph file's sha256: a graph whose
  record is missing, whose hash differs (a corrupt or truncated file) or that
  onnxruntime cannot load is exported again, never trusted. Both files are written
  beside their target and renamed into place (an interruption leaves no half file).

Precision: fp32 (fp16 / bf16 are CUDA-only and run in fp32 here, as torch does), or
int8: ONNX Runtime's dynamic quantization (`onnxruntime.quantization.quantize_dynamic`,
uint8 weights: MatMul -> MatMulInteger, activations quantized per call) of the fp32
graph, cached beside it as `<name>-int8-<key>.onnx`. Measured interleaved on this
project's 2-core x86 machine it runs clearly faster than torch's own int8 and moves
the probabilities less (README, "ONNX Runtime on the CPU").

Speed (same answers): the export runs timm's rope attention as `lean_attention`
(constant shapes, head-major q / k / v, the rotary embedding as a small matmul), and
`OnnxClassifier.run` splits a batch into chunks whose attention scores stay in cache
(`images_per_call`); together 1.2-1.7x torch fp32 on 2 cores at batch 1 and 8.

No ROS here (core layer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import types
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.device import resolve_precision
from soft_biometrics_ros.files import sha256_file
from soft_biometrics_ros.models.classifier import FaceClassifier, check_batch, empty_probabilities

logger = logging.getLogger(__name__)

RUNTIMES = ('torch', 'onnxruntime', 'auto')
OPSET = 18
GRAPH_FOLDER = 'onnx'
INPUT_NAME = 'images'
# Bumped when the exported graph's layout (inputs, outputs, wrapper, attention) changes.
GRAPH_FORMAT = 3
# A session call gets as many images as keep one layer's attention scores (heads x L x L
# float32) within this: a batch of 8 PE-Core-T faces at 384 px (32 MB a layer) ran 6-20%
# slower a face than 4 calls of 2 (4 MB an image) on the 2-core machine, the scores no
# longer staying in cache between the softmax and the product with v.
ATTENTION_CHUNK_BYTES = 8 << 20
INSTALL_HINT = ('pip install -r requirements/runtime.txt (it pins onnxruntime), or set '
                'runtime: torch')
_GRAPH_NAME = re.compile(r'^(?P<stem>.+?)(?P<int8>-int8)?-(?P<key>[0-9a-f]{20})\.onnx$')


class OnnxRuntimeUnavailable(ValueError):
    """runtime onnxruntime was asked for and the onnxruntime package cannot be imported.

    A ValueError: a setting this installation cannot honour (the CLIs report it as a bad
    option, the node as a failed configure), in one line.
    """


def _import_onnxruntime():
    """Return the onnxruntime module, or raise OnnxRuntimeUnavailable in one line."""
    try:
        import onnxruntime
    except ImportError as error:
        raise OnnxRuntimeUnavailable(
            f'runtime onnxruntime: the onnxruntime package is not installed ({error}); '
            f'{INSTALL_HINT}') from None
    return onnxruntime


def onnxruntime_version() -> Optional[str]:
    """Return the installed onnxruntime's version, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def resolve_runtime(name: Optional[str], device: Union[str, torch.device],
                    precision: Optional[str] = 'fp32') -> str:
    """Return 'torch' or 'onnxruntime' for the `runtime` setting on `device`.

    torch: torch. onnxruntime: ONNX Runtime; raises OnnxRuntimeUnavailable (one line)
    when it is not installed and ValueError on a non-CPU device. auto: onnxruntime on a
    CPU device when it is installed, torch otherwise (and on CUDA), with an info line
    saying which. `precision` is accepted for the callers' convenience (every precision
    runs in both runtimes on the CPU).
    """
    key = (name or 'auto').strip().lower()
    if key not in RUNTIMES:
        raise ValueError(f'runtime {name!r} is not one of {", ".join(RUNTIMES)}')
    device = torch.device(device)
    if key == 'torch':
        return 'torch'
    if key == 'onnxruntime':
        if device.type != 'cpu':
            raise ValueError(f'runtime onnxruntime runs the classifier on the CPU; device is '
                             f'{device} (use runtime: torch or auto there)')
        _import_onnxruntime()
        return 'onnxruntime'
    if device.type != 'cpu':
        logger.info('runtime auto: torch on %s (ONNX Runtime is used on the CPU only)', device)
        return 'torch'
    version = onnxruntime_version()
    if version is None:
        logger.info('runtime auto: onnxruntime is not installed; the classifier runs in torch '
                    '(%s for the faster CPU runtime)', INSTALL_HINT.split(',')[0])
        return 'torch'
    logger.info('runtime auto: the classifier runs in ONNX Runtime %s on the CPU', version)
    return 'onnxruntime'


class ProbabilityGraph(nn.Module):
    """What is exported: images (N, 3, S, S) -> the tasks' probabilities, schema order."""

    def __init__(self, classifier: FaceClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Return one (N, C_task) probability tensor per task, in labels.TASKS order."""
        logits = self.classifier(images)
        return tuple(logits[task].float().softmax(dim=-1) for task in labels.TASKS)


def _rope_tables(rope: torch.Tensor, prefix: int, half: bool, scale: float,
                 dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return cos, sin (1, 2, 1, L, D) and the rotation matrix (D, D) of a rope.

    `rope` is timm's concatenated [sin | cos] table (L - prefix, 2D) of the patch tokens.
    Rows of the `prefix` tokens get cos 1 and sin 0 (no rotation), so the rotation runs
    on the whole sequence without slicing. rot(x) = x @ R, R a signed permutation
    (timm's interleaved [-x1, x0, -x3, x2, ...], or with `half` [-x_(D/2).., x_0..]):
    each output is one exact product, and a matmul runs far faster in ONNX Runtime than a
    gather along the last axis. Axis 1 is (query, key); the attention scale is folded
    into the query's half of both tables.
    """
    sin, cos = rope.to(dtype).chunk(2, dim=-1)
    dim = cos.shape[-1]
    cos = torch.cat([cos.new_ones(prefix, dim), cos.reshape(-1, dim)], dim=0)
    sin = torch.cat([sin.new_zeros(prefix, dim), sin.reshape(-1, dim)], dim=0)
    index = torch.arange(dim, device=rope.device)
    if half:
        source = (index + dim // 2) % dim
        sign = torch.where(index < dim // 2, -1.0, 1.0)
    else:
        source = index ^ 1
        sign = torch.where(index % 2 == 0, -1.0, 1.0)
    rotation = torch.zeros(dim, dim, dtype=dtype, device=rope.device)
    rotation[source, index] = sign.to(dtype)
    rows = _query_key_scale(scale, dtype, rope.device)
    return cos * rows, sin * rows, rotation


def _query_key_scale(scale: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """(1, 2, 1, 1, 1): the attention scale on the query, 1 on the key."""
    return torch.tensor([scale, 1.0], dtype=dtype, device=device).view(1, 2, 1, 1, 1)


def _head_projections(self, x: torch.Tensor, tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return q and k stacked (B, 2, heads, L, D) and v (B, heads, L, D) of `x` (B, L, C).

    A plain qkv Linear (every method's after merging) runs as batched per-head matmuls,
    x (B, 1, L, C) @ W (heads, C, D), whose outputs are already head-major: no transpose
    of the whole qkv tensor, which costs ONNX Runtime more than the matmuls save.
    Any other qkv module (e.g. an adapter left unmerged) runs as it is, then one permute.
    """
    heads, dim, qkv = self.num_heads, self.head_dim, self.qkv
    if type(qkv) is nn.Linear:  # noqa: E721 (subclasses may change forward)
        channels = qkv.in_features
        weight = qkv.weight.reshape(3, heads, dim, channels).transpose(-1, -2)
        bias = (qkv.bias if qkv.bias is not None
                else qkv.weight.new_zeros(3 * heads * dim)).reshape(3, heads, 1, dim)
        rows = x.unsqueeze(1)
        qk = rows @ weight[:2].reshape(2 * heads, channels, dim) + bias[:2].reshape(
            2 * heads, 1, dim)
        return qk.reshape(-1, 2, heads, tokens, dim), rows @ weight[2] + bias[2]
    qkv = qkv(x).reshape(-1, tokens, 3, heads, dim).permute(0, 2, 3, 1, 4)  # (B, 3, H, L, D)
    return qkv[:, :2], qkv[:, 2]


def _lean_rope_attention(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                         attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
    """Run timm's AttentionRope forward as a short exported graph does (same result).

    The sequence length is fixed by the input size, so every reshape has a constant
    shape (batch -1); q, k, v come out head-major (`_head_projections`); the rotary
    embedding is a small matmul and two products over the whole sequence
    (`_rope_tables`) instead of slices, a stack and concatenations around the prefix
    tokens; attention is written out (softmax(q k^T) v, the scale folded into q), which
    ONNX Runtime fuses into transposed matmuls. Anything else (masks, causal, training)
    runs timm's own forward.
    """
    if attn_mask is not None or is_causal or self.training:
        return type(self).forward(self, x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
    tokens = int(x.shape[1])
    qk, v = _head_projections(self, x, tokens)
    if rope is not None:
        cos, sin, rotation = _rope_tables(rope, self.num_prefix_tokens,
                                          bool(getattr(self, 'rotate_half', False)),
                                          self.scale, qk.dtype)
        qk = qk * cos + (qk @ rotation) * sin
    else:
        qk = qk * _query_key_scale(self.scale, qk.dtype, qk.device)
    attention = (qk[:, 0] @ qk[:, 1].transpose(-2, -1)).softmax(dim=-1)
    out = (attention @ v).transpose(1, 2).reshape(-1, tokens, self.attn_dim)
    return self.proj(out)


def _lean_attention_applies(module: nn.Module) -> bool:
    """Whether `module` is a timm AttentionRope that `_lean_rope_attention` reproduces."""
    try:
        from timm.layers import AttentionRope
    except ImportError:
        return False
    return (isinstance(module, AttentionRope) and module.qkv is not None
            and getattr(module, 'gate', None) is None
            and getattr(module, 'num_kv_groups', 1) == 1
            and all(isinstance(getattr(module, name, nn.Identity()), nn.Identity)
                    for name in ('q_norm', 'k_norm', 'norm')))


def images_per_call(classifier: nn.Module, input_size: int) -> Optional[int]:
    """Images per session call (ATTENTION_CHUNK_BYTES), None for any number (no rope ViT)."""
    trunk = next((m for m in classifier.modules()
                  if hasattr(m, 'patch_embed') and hasattr(m, 'blocks')), None)
    heads = [m.num_heads for m in classifier.modules() if _lean_attention_applies(m)]
    if trunk is None or not heads:
        return None
    patch = getattr(trunk.patch_embed, 'patch_size', 16)
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    tokens = (int(input_size) // patch) ** 2 + int(getattr(trunk, 'num_prefix_tokens', 1))
    return max(1, ATTENTION_CHUNK_BYTES // (max(heads) * tokens * tokens * 4))


@contextmanager
def lean_attention(model: nn.Module):
    """While exporting, run `model`'s rope attention modules as `_lean_rope_attention`.

    The graph ONNX Runtime runs then has about a third of the nodes per block (no
    dynamic-shape arithmetic, no rope slicing); the modules are restored afterwards.
    Yields how many modules were switched.
    """
    switched = [m for m in model.modules() if _lean_attention_applies(m)]
    for module in switched:
        module.forward = types.MethodType(_lean_rope_attention, module)
    try:
        yield len(switched)
    finally:
        for module in switched:
            del module.forward


def model_key(classifier: FaceClassifier) -> str:
    """Return the cache key of `classifier`'s graph (20 hex digits).

    Hashes every state-dict tensor (name, dtype, shape and all its bytes), the module
    structure (its repr), the input size, the graph format and the torch and
    onnxruntime versions: any change of weights, architecture, exporter or runtime
    gives another key.
    """
    digest = hashlib.sha256()
    header = [type(classifier).__name__, classifier.backbone_name, classifier.input_size,
              repr(classifier), torch.__version__, onnxruntime_version(), GRAPH_FORMAT, OPSET]
    digest.update(json.dumps(header, default=str).encode())
    for name, tensor in sorted(classifier.state_dict().items()):
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()[:20]


def user_cache_dir(cache_dir: Union[None, str, Path] = None) -> Path:
    """Return where graphs without a checkpoint folder are cached.

    `cache_dir`/onnx when given, else $XDG_CACHE_HOME (default ~/.cache)
    /soft_biometrics_ros/onnx.
    """
    if cache_dir:
        return Path(cache_dir).expanduser() / GRAPH_FOLDER
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base).expanduser() / 'soft_biometrics_ros' / GRAPH_FOLDER


def graph_path(classifier: FaceClassifier, checkpoint: Optional[Path],
               cache_dir: Union[None, str, Path] = None, key: Optional[str] = None) -> Path:
    """Return where the graph of `classifier` is cached (see the module docstring)."""
    key = key or model_key(classifier)
    if checkpoint is not None:
        folder = Path(checkpoint) / GRAPH_FOLDER
        if _writable(folder):
            return folder / f'classifier-{key}.onnx'
        logger.warning('checkpoint %s is not writable; its ONNX graph is cached in %s',
                       checkpoint, user_cache_dir(cache_dir))
        return user_cache_dir(cache_dir) / f'checkpoint-{classifier.backbone_name}-{key}.onnx'
    return user_cache_dir(cache_dir) / f'zero-shot-{classifier.backbone_name}-{key}.onnx'


def _writable(folder: Path) -> bool:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    return os.access(existing, os.W_OK)


def _record_path(path: Path) -> Path:
    return path.with_suffix('.json')


def _replace_atomically(write, target: Path) -> None:
    """Call write(temporary_path) beside `target`, then rename it onto `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f'.{target.name}.', suffix='.tmp',
                                    dir=str(target.parent))
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def export_graph(classifier: FaceClassifier, path: Union[str, Path],
                 key: Optional[str] = None) -> Path:
    """Export `classifier` (fp32, eval, adapters merged) to the ONNX graph `path`, atomically.

    Writes `path` and its record `<path>.json` (key, sha256 of the graph, versions).
    Returns `path`. Stale graphs of other keys in the same folder are removed.
    """
    path = Path(path)
    key = key or model_key(classifier)
    if classifier.quantized:
        raise ValueError('export the fp32 classifier; int8 (torch dynamic quantization) '
                         'layers do not export to ONNX')
    size = classifier.input_size
    example = torch.zeros((2, 3, size, size))
    graph = ProbabilityGraph(classifier).eval()
    outputs = list(labels.TASKS)
    axes = {INPUT_NAME: {0: 'batch'}, **{task: {0: 'batch'} for task in outputs}}

    def write(temporary: Path) -> None:
        import warnings
        with warnings.catch_warnings(), torch.no_grad(), lean_attention(graph):
            # The TorchScript exporter warns about traced Python values (shapes read in
            # Python, the constant sequence length); the equality tests check the result.
            warnings.simplefilter('ignore')
            torch.onnx.export(graph, (example,), str(temporary), opset_version=OPSET,
                              dynamo=False, input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes=axes, do_constant_folding=True)

    started = time.monotonic()
    logger.info('exporting the %s classifier to ONNX (once per model; PE-Core-T ~10 s on 2 '
                'cores, larger backbones longer): %s', classifier.backbone_name, path)
    _replace_atomically(write, path)
    record = {'key': key, 'sha256': sha256_file(path), 'backbone': classifier.backbone_name,
              'input_size': size, 'opset': OPSET, 'outputs': outputs,
              'torch': torch.__version__, 'onnxruntime': onnxruntime_version()}
    _replace_atomically(lambda temporary: temporary.write_text(json.dumps(record, indent=1)),
                        _record_path(path))
    logger.info('ONNX graph written in %.1f s: %s (%.1f MB)', time.monotonic() - started,
                path, path.stat().st_size / 1e6)
    remove_stale_graphs(path, key)
    return path


def remove_stale_graphs(path: Path, key: str) -> None:
    """Remove the graphs (fp32 and int8) of other keys beside `path` with its name stem."""
    mine = _GRAPH_NAME.match(path.name)
    if mine is None:
        return
    for other in path.parent.glob('*.onnx'):
        found = _GRAPH_NAME.match(other.name)
        if found and found['stem'] == mine['stem'] and found['key'] != key:
            other.unlink(missing_ok=True)
            _record_path(other).unlink(missing_ok=True)


def int8_graph_path(path: Path) -> Path:
    """Return where the int8 graph of the fp32 graph `path` is cached."""
    found = _GRAPH_NAME.match(path.name)
    if found is None:
        return path.with_name(path.stem + '-int8.onnx')
    return path.with_name(f'{found["stem"]}-int8-{found["key"]}.onnx')


def quantize_graph(path: Path, target: Path, key: str) -> Path:
    """Write ONNX Runtime's dynamic int8 quantization of the graph `path` to `target`.

    uint8 weights (QUInt8; the int8-weight kernels were slower on this x86 CPU), per
    tensor, activations quantized per call; written atomically with its record.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    started = time.monotonic()
    logger.info('quantizing the ONNX graph to int8 (dynamic, once per model): %s', target)
    _replace_atomically(lambda temporary: quantize_dynamic(
        str(path), str(temporary), weight_type=QuantType.QUInt8), target)
    record = json.loads(_record_path(path).read_text())
    record.update(sha256=sha256_file(target), precision='int8', quantized_from=path.name)
    _replace_atomically(lambda temporary: temporary.write_text(json.dumps(record, indent=1)),
                        _record_path(target))
    logger.info('int8 ONNX graph written in %.1f s: %s (%.1f MB)', time.monotonic() - started,
                target, target.stat().st_size / 1e6)
    return target


def cached_graph_problem(path: Path, key: str) -> Optional[str]:
    """Return None when `path` is a complete cached graph for `key`, else what is wrong."""
    if not path.is_file():
        return 'not exported yet'
    record_path = _record_path(path)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        return f'its record {record_path.name} is unreadable ({error})'
    if not isinstance(record, dict) or record.get('key') != key:
        return f'its record {record_path.name} is for another model'
    if record.get('sha256') != sha256_file(path):
        return 'the graph file does not match its recorded sha256 (corrupt or truncated)'
    return None


def session_options(threads: Optional[int] = None):
    """Return onnxruntime SessionOptions: `threads` intra-op threads (None = torch's), no spin.

    Idle worker threads sleep instead of spinning, so a classifier waiting for frames
    leaves the cores to the detector and the rest of the robot.
    """
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.add_session_config_entry('session.inter_op.allow_spinning', '0')
    options.log_severity_level = 3  # errors only; warnings come back as exceptions
    return options


def open_session(path: Union[str, Path], threads: Optional[int] = None):
    """Return an onnxruntime.InferenceSession of the graph `path` on the CPU."""
    ort = _import_onnxruntime()
    return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                providers=['CPUExecutionProvider'])


class OnnxClassifier(FaceClassifier):
    """A FaceClassifier whose forward runs an exported graph in ONNX Runtime (CPU).

    Same interface as the torch classifier it was exported from (preprocess,
    predict_proba, predict, input_size, backbone_name, untrained, method_name...).
    It has no torch parameters; `forward` returns log-probabilities as the logits
    (softmax gives back the graph's probabilities, so torch code that applies softmax
    to logits, like training.evaluation, reads the same answers). `runtime` is
    'onnxruntime', `graph_path` the graph file it runs.
    """

    runtime = 'onnxruntime'

    def __init__(self, session, source: FaceClassifier, graph_file: Path,
                 quantized: bool = False):
        super().__init__(source.backbone_name, source.preprocess_config, source.untrained)
        self.quantized = bool(quantized)
        self.compute_dtype = torch.qint8 if quantized else torch.float32
        self.session = session
        self.graph_path = Path(graph_file)
        self.source_type = type(source).__name__
        for name in ('method_name', 'pretrained', 'backbone_fingerprint', 'merged'):
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))
        self.images_per_call = images_per_call(source, source.input_size)
        self._outputs = [o.name for o in session.get_outputs()]
        if self._outputs != list(labels.TASKS):
            raise ValueError(f'ONNX graph {graph_file} gives {self._outputs}, expected the '
                             f'tasks {list(labels.TASKS)}')

    @property
    def threads(self) -> int:
        """Intra-op threads of the session."""
        return int(self.session.get_session_options().intra_op_num_threads)

    def set_precision(self, precision) -> torch.dtype:
        """Check `precision` against the graph's: int8 runs an int8 graph, the rest fp32.

        fp16 / bf16 fall back to fp32 on the CPU with a warning, as in torch. The graph's
        precision is chosen when it is built (onnx_classifier); asking for another one
        is a ValueError saying so.
        """
        if isinstance(precision, torch.dtype):
            precision = {torch.qint8: 'int8'}.get(precision, 'fp32')
        dtype = resolve_precision(precision, 'cpu')
        if (dtype == torch.qint8) != self.quantized:
            raise ValueError(
                f'{self.backbone_name}: this ONNX Runtime classifier runs a '
                f'{"int8" if self.quantized else "fp32"} graph and cannot run in {precision}; '
                f'build the classifier again with that precision')
        return self.compute_dtype

    def run(self, images: np.ndarray) -> List[np.ndarray]:
        """Run the graph on a float32 (N, 3, S, S) array; return one array per task.

        A batch larger than `images_per_call` runs in chunks of that many images (same
        answers, each image's are its own; faster, see ATTENTION_CHUNK_BYTES).
        """
        chunk = self.images_per_call
        if not chunk or len(images) <= chunk:
            return self.session.run(self._outputs, {INPUT_NAME: images})
        parts = [self.session.run(self._outputs, {INPUT_NAME: images[start:start + chunk]})
                 for start in range(0, len(images), chunk)]
        return [np.concatenate(task, axis=0) for task in zip(*parts)]

    def predict_proba(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Return task -> probabilities (N, C_task) float32, as FaceClassifier's."""
        if check_batch(batch, self.input_size) == 0:
            return empty_probabilities()
        images = np.ascontiguousarray(batch.detach().to('cpu', torch.float32).numpy())
        return {task: torch.from_numpy(p) for task, p in zip(labels.TASKS, self.run(images))}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Return task -> log-probabilities (N, C_task) (softmax = the probabilities)."""
        probabilities = self.predict_proba(images)
        return {t: p.clamp_min(1e-38).log() for t, p in probabilities.items()}

    def extra_repr(self) -> str:
        """Say what runs: the graph file and the threads."""
        return f'{self.source_type} in ONNX Runtime, graph={self.graph_path}, ' \
               f'threads={self.threads}, {"int8" if self.quantized else "fp32"}'


def onnx_classifier(classifier: FaceClassifier, checkpoint: Optional[Path] = None,
                    cache_dir: Union[None, str, Path] = None,
                    precision: Optional[str] = 'fp32') -> OnnxClassifier:
    """Return `classifier` (eval, fp32, adapters merged) running in ONNX Runtime.

    Loads the cached graph when its key matches (see the module docstring), else exports
    it (logging how long that took) and caches it; a cached graph that fails its check or
    does not load is exported again. precision int8: the int8 graph quantized from the
    fp32 one, cached the same way. Zero-shot on random weights is exported to a
    temporary folder, not cached. Raises OnnxRuntimeUnavailable when onnxruntime is not
    installed.
    """
    _import_onnxruntime()
    int8 = resolve_precision(precision, 'cpu') == torch.qint8
    classifier = classifier.to('cpu').eval()
    key = model_key(classifier)
    if checkpoint is None and classifier.untrained:
        # Random zero-shot weights are drawn anew at every build: nothing to reuse.
        # The temporary folder goes with the classifier (or at exit), not left in /tmp.
        folder = Path(tempfile.mkdtemp(prefix='soft_biometrics_onnx_'))
        try:
            path = export_graph(classifier, folder / f'zero-shot-{key}.onnx', key)
            if int8:
                path = quantize_graph(path, int8_graph_path(path), key)
            result = OnnxClassifier(open_session(path), classifier, path, quantized=int8)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        weakref.finalize(result, shutil.rmtree, str(folder), True)
        return result
    path = graph_path(classifier, checkpoint, cache_dir, key)
    wanted = int8_graph_path(path) if int8 else path
    session = _cached_session(wanted, key)
    if session is not None:
        return OnnxClassifier(session, classifier, wanted, quantized=int8)
    if int8 and _cached_session(path, key) is not None:  # the fp32 graph is good
        return OnnxClassifier(open_session(quantize_graph(path, wanted, key)), classifier,
                              wanted, quantized=True)
    export_graph(classifier, path, key)
    if int8:
        quantize_graph(path, wanted, key)
    return OnnxClassifier(open_session(wanted), classifier, wanted, quantized=int8)


def _cached_session(path: Path, key: str):
    """Return a session of the cached graph `path` when it checks out, else None (logged)."""
    problem = cached_graph_problem(path, key)
    if problem is not None:
        if path.exists():
            logger.warning('cached ONNX graph %s is not used: %s; exporting it again', path,
                           problem)
        return None
    started = time.monotonic()
    try:
        session = open_session(path)
    except Exception as error:  # onnxruntime raises its own exception types
        logger.warning('cached ONNX graph %s does not load (%s); exporting it again', path,
                       str(error).splitlines()[0] if str(error) else error)
        return None
    logger.info('ONNX graph loaded from cache in %.1f s: %s', time.monotonic() - started, path)
    return session
