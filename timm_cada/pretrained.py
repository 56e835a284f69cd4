""" The weights manifest: published checkpoints, the pretrained cfgs generated from it, and their verification.

`timm_cada/weights_manifest.json` lists every published checkpoint. A manifest entry is all it takes for
`timm.create_model(name, pretrained=True)` and `timm.list_pretrained()` to offer it: the model's pretrained
cfgs are generated from the manifest at import. Weights come from the Hugging Face Hub at the pinned
revision, through timm's own hub download (and cache), and their sha256 is checked against the manifest
before a single tensor is read.

Setting the environment variable TIMM_CADA_WEIGHTS_MANIFEST to a JSON file of the same format replaces the
packaged manifest (read once, at import): to try a new entry before releasing it, or to serve weights from
a private Hub organisation.
"""
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

from safetensors import SafetensorError
from timm.models import PretrainedCfg
from timm.models._hub import download_from_hf

__all__ = [
    'MANIFEST_ENV', 'FIELD_RULES', 'WeightsEntry', 'WeightsIntegrityError', 'check_field', 'manifest_path',
    'load_manifest', 'pretrained_cfgs',
    'file_sha256', 'verified_weights_file', 'verified_pretrained_overlay', 'readable_weights',
]

MANIFEST_ENV = 'TIMM_CADA_WEIGHTS_MANIFEST'
_PACKAGED_MANIFEST = Path(__file__).with_name('weights_manifest.json')
_SHA256 = re.compile(r'[0-9a-f]{64}')
_COMMIT = re.compile(r'[0-9a-f]{40}')
_REPO_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*')
_TAG = re.compile(r'[a-z0-9][a-z0-9_]*')


class WeightsIntegrityError(RuntimeError):
    """Pretrained weights that are not the published file: sha256 mismatch, truncated or corrupted."""


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint of one registered model.

    Args:
        model: registered model name, e.g. 'resnet50_cada_k7'.
        tag: pretrained tag; the weights are offered as 'model.tag' (timm convention, e.g. 'in1k').
        hf_hub_id: Hugging Face Hub repository 'org/name'.
        revision: the 40-hex commit of that repository the weights were published at.
        sha256: sha256 of the weights file.
        dataset: dataset the weights were trained and evaluated on, e.g. 'imagenet-1k'.
        top1: top-1 accuracy (%) measured on that dataset's validation split.
        top5: top-5 accuracy (%), when measured.
        recipe: how the weights were trained (command line or recipe file).
        num_classes: classifier outputs.
        input_size: (C, H, W) the weights were trained and evaluated at.
        crop_pct: evaluation center-crop fraction.
        filename: weights file in the repository.
        license: license of the weights.
    """
    model: str
    tag: str
    hf_hub_id: str
    revision: str
    sha256: str
    dataset: str
    top1: float
    top5: Optional[float] = None
    recipe: Optional[str] = None
    num_classes: int = 1000
    input_size: tuple = (3, 224, 224)
    crop_pct: float = 0.95
    filename: str = 'model.safetensors'
    license: str = 'apache-2.0'

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    @property
    def hub_location(self) -> str:
        """'org/name@revision', the form timm's hub helpers take for a pinned revision."""
        return f'{self.hf_hub_id}@{self.revision}'


def _text(pattern: Optional[re.Pattern] = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and bool(v.strip()) and (pattern is None or bool(pattern.fullmatch(v)))


def _number(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (lo < v if lo_open else lo <= v) and v <= hi)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# What each manifest field accepts: (check, description). Optional fields also accept null.
FIELD_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    'model': (_text(), 'a registered model name'),
    'tag': (_text(_TAG), 'lower-case letters, digits and _, starting with a letter or digit'),
    'hf_hub_id': (_text(_REPO_ID), "a Hub repository 'org/name' (letters, digits, '.', '_', '-')"),
    'revision': (_text(_COMMIT), 'the 40-hex commit hash the weights were uploaded at'),
    'sha256': (_text(_SHA256), '64 lower-case hex digits'),
    'dataset': (_text(), 'a dataset name, e.g. imagenet-1k'),
    'top1': (_number(0, 100), 'a number from 0 to 100 (percent)'),
    'top5': (_number(0, 100), 'a number from 0 to 100 (percent), or null'),
    'recipe': (_text(), 'a recipe (command line or file), or null'),
    'num_classes': (_positive_int, 'an integer >= 1'),
    'input_size': (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_positive_int, v)),
                   'three integers >= 1, [C, H, W]'),
    'crop_pct': (_number(0, 1, lo_open=True), 'a number in (0, 1]'),
    'filename': (_text(re.compile(r'(?!.*(?:^|/)\.\.(?:/|$))(?:[\w.-]+/)*[\w.-]+\.safetensors')),
                 'a .safetensors file path in the repository'),
    'license': (_text(), 'a license identifier, e.g. apache-2.0'),
}


_FIELDS = {f.name: f for f in dataclasses.fields(WeightsEntry)}


def check_field(key: str, value: Any, where: str) -> None:
    """Raise a ValueError naming `key` and what it accepts when `value` breaks the manifest's rule for it."""
    if value is None and _FIELDS[key].default is None:
        return
    check, accepted = FIELD_RULES[key]
    if not check(value):
        raise ValueError(f'{where}: {key}={value!r} is invalid, expected {accepted}')


def _entry(raw: Mapping[str, Any], where: str) -> WeightsEntry:
    """A validated WeightsEntry from one manifest JSON object."""
    if not isinstance(raw, Mapping):
        raise ValueError(f'{where}: a manifest entry must be a JSON object, got {type(raw).__name__}')
    required = [n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING]
    unknown = sorted(set(raw) - set(_FIELDS))
    missing = [n for n in required if n not in raw]
    if unknown or missing:
        raise ValueError(f'{where}: unknown keys {unknown}, missing keys {missing}; accepted keys: {list(_FIELDS)}')
    for key, value in raw.items():
        check_field(key, value, where)
    raw = dict(raw)
    if 'input_size' in raw:
        raw['input_size'] = tuple(raw['input_size'])
    return WeightsEntry(**raw)


def manifest_path() -> Path:
    """The manifest in use: $TIMM_CADA_WEIGHTS_MANIFEST when set, else the one packaged with timm_cada."""
    return Path(os.environ.get(MANIFEST_ENV) or _PACKAGED_MANIFEST)


def load_manifest(path: Optional[Union[str, Path]] = None) -> Dict[str, WeightsEntry]:
    """Manifest entries keyed by 'model.tag', validated.

    The file is a JSON object {"weights": [entry, ...]}, each entry the fields of WeightsEntry.
    """
    path = Path(path) if path is not None else manifest_path()
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'cannot read the weights manifest {path}: {e}') from e
    if not isinstance(data, dict) or not isinstance(data.get('weights'), list):
        raise ValueError(f'weights manifest {path}: expected a JSON object {{"weights": [...]}}')
    entries = {}
    for i, raw in enumerate(data['weights']):
        entry = _entry(raw, f'weights manifest {path}, entry {i}')
        if entry.name in entries:
            raise ValueError(f'weights manifest {path}: {entry.name!r} is listed twice')
        entries[entry.name] = entry
    return entries


def pretrained_cfgs(
        base_cfgs: Mapping[str, Dict[str, Any]],
        manifest: Mapping[str, WeightsEntry],
) -> Dict[str, Dict[str, Any]]:
    """timm pretrained cfgs ('model' or 'model.tag' -> cfg) for every model of `base_cfgs`.

    A model with manifest entries gets one tagged cfg per entry (the first listed is its default) and no
    untagged one; a model without entries keeps its untagged cfg with no weight source.
    """
    unknown = sorted({e.model for e in manifest.values()} - set(base_cfgs))
    if unknown:
        raise ValueError(f'weights manifest lists models that are not registered: {unknown}')
    published = {e.model for e in manifest.values()}
    cfgs = {name: dict(cfg) for name, cfg in base_cfgs.items() if name not in published}
    for entry in manifest.values():
        top = f'top-1 {entry.top1:.2f}%' + (f', top-5 {entry.top5:.2f}%' if entry.top5 is not None else '')
        cfgs[entry.name] = dict(
            base_cfgs[entry.model],
            hf_hub_id=entry.hub_location,
            hf_hub_filename=entry.filename,
            num_classes=entry.num_classes,
            input_size=entry.input_size,
            crop_pct=entry.crop_pct,
            license=entry.license,
            description=f'{entry.dataset}: {top}',
        )
    return cfgs


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def verified_weights_file(entry: WeightsEntry, cache_dir: Optional[Union[str, Path]] = None) -> str:
    """Local path of the entry's weights (downloaded into the Hugging Face cache if needed), sha256 checked."""
    path = download_from_hf(entry.hub_location, entry.filename, cache_dir=cache_dir)
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise WeightsIntegrityError(
            f'Refusing the pretrained weights of {entry.name}: sha256 of {path} is {actual}, but the weights '
            f'manifest lists {entry.sha256} for {entry.hub_location}/{entry.filename}. The file is corrupted, '
            f'truncated or not the published checkpoint; delete it from the Hugging Face cache and try again.')
    return path


def verified_pretrained_overlay(
        cfg: PretrainedCfg,
        manifest: Mapping[str, WeightsEntry],
        overlay: Optional[Dict[str, Any]] = None,
        cache_dir: Optional[Union[str, Path]] = None,
) -> Optional[Dict[str, Any]]:
    """`overlay`, plus file=<verified local path> when `cfg` loads a manifest checkpoint from the Hub.

    timm then loads that very file; cfgs that name another source (hf-hub:/local-dir: model names, a file,
    a state dict, a different hub id) are returned unchanged.
    """
    entry = manifest.get(f'{cfg.architecture}.{cfg.tag}')
    if (entry is None or cfg.source not in (None, '', 'timm') or cfg.file or cfg.state_dict
            or cfg.hf_hub_id != entry.hub_location):
        return overlay
    return dict(overlay or {}, file=verified_weights_file(entry, cache_dir=cache_dir))


@contextlib.contextmanager
def readable_weights(variant: str, cfg: PretrainedCfg) -> Iterator[None]:
    """Turn a safetensors parse error while loading pretrained weights into a WeightsIntegrityError."""
    try:
        yield
    except SafetensorError as e:
        where = cfg.file or cfg.hf_hub_id or cfg.url
        raise WeightsIntegrityError(
            f'Refusing the pretrained weights of {variant} from {where}: the safetensors file is truncated or '
            f'corrupted ({e}). Delete it (from the Hugging Face cache, for a Hub download) and try again.') from e
