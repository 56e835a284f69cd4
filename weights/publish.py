#!/usr/bin/env python3
""" Publish a trained checkpoint as a timm model on the Hugging Face Hub.

    python weights/publish.py --checkpoint OUT/model_best.pth.tar --model resnet50_cada_k7 \\
        --repo-id ORG/resnet50_cada_k7.in1k --out DIR [--dry-run]

Reads a training checkpoint of train/train.py (EMA weights when it has them, see --ema), a bare state dict
or a .safetensors file, and writes DIR with timm's Hub layout: model.safetensors, config.json (timm's
save_for_hf, with the model kwargs, so `timm.create_model('hf-hub:ORG/NAME')` rebuilds the exact variant)
and a README.md model card. It then checks that DIR rebuilds the same model
(`local-dir:DIR` gives the checkpoint's outputs) and stops before any upload if not. Without --dry-run DIR is uploaded with huggingface_hub
(token from HF_TOKEN or `hf auth login`); then the weights' sha256, the Hub revision and the entry to add to
timm_cada/weights_manifest.json are printed, after which `timm.create_model(NAME, pretrained=True)` serves it.
"""
import argparse
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

import timm
from timm.models._hub import generate_readme  # timm exports no public name for it

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.checkpoint import checkpoint_state_dict, read_checkpoint
from timm_cada.compat import require_timm
from timm_cada.layers import get_mixer
from timm_cada.load import SAVE_FOR_HF_TIMM, save_local_dir
from timm_cada.models import VARIANTS, get_variant
from timm_cada.pretrained import check_field, file_sha256
from timm_cada.profile import count_macs, count_params

OUTPUT_FILES = ('model.safetensors', 'config.json', 'README.md')

# Model args that a manifest entry (a registered name + pretrained cfg) can express: the rest need hf-hub:.
_CFG_ARGS = {'num_classes', 'img_size', 'in_chans', 'global_pool'}

# Training arguments left out of the card: local paths and process details, not the recipe.
_PRIVATE_ARGS = {'data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'local_rank', 'device', 'experiment'}

CITATION = """@article{arizumi2022studying,
  title={Studying inductive biases in image classification task},
  author={Arizumi, Nana and others},
  journal={arXiv preprint arXiv:2210.17141},
  year={2022}
}"""


def _mixer_args(mixer: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """`args` completed with the mixer constructor's defaults: equal results build equal mixers."""
    params = inspect.signature(get_mixer(mixer).cls.__init__).parameters
    return dict({k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}, **args)


def _variant_args(model_name: str, model_args: Dict[str, Any], fixed_input_size: bool) -> Dict[str, Any]:
    """The model args that make this model differ from the registered variant (beyond what a cfg expresses).

    img_size reaches the model through the cfg's input_size only for fixed-input-size models.
    """
    variant = VARIANTS[model_name].args
    extra = {}
    for k, v in model_args.items():
        if k == 'img_size' and not fixed_input_size and timm.layers.to_2tuple(v) != (224, 224):
            extra[k] = v
        if k in _CFG_ARGS or variant.get(k) == v:
            continue
        if k == 'mixer_args':
            base = variant.get('mixer_args', {})
            if _mixer_args(variant['mixer'], dict(base, **(v or {}))) == _mixer_args(variant['mixer'], base):
                continue
        extra[k] = v
    if model_args.get('in_chans', 3) != 3 or model_args.get('global_pool', 'avg') != 'avg':
        extra.update({k: model_args[k] for k in ('in_chans', 'global_pool') if k in model_args})
    return extra


def _dataset_tag(dataset: str) -> str:
    """A timm pretrained tag for a dataset name: 'imagenet-1k' -> 'in1k', else its name in lower snake case."""
    known = {'imagenet-1k': 'in1k', 'imagenet': 'in1k', 'imagenet1k': 'in1k', 'imagenet-21k': 'in21k'}
    return known.get(dataset.lower(), re.sub(r'[^a-z0-9]+', '_', dataset.lower()).strip('_'))


def load_weights(
        checkpoint: Path,
        model_name: str,
        model_kwargs: Optional[Dict[str, Any]] = None,
        use_ema: Optional[bool] = None,
) -> tuple:
    """(model in eval mode with the checkpoint's weights, checkpoint metadata) for `model_name`.

    `use_ema`: None takes the EMA weights when the checkpoint has them, True requires them, False skips them.
    """
    try:
        get_variant(model_name)
    except ValueError as e:
        raise ValueError(f'--model: {e}') from None
    ckpt = read_checkpoint(checkpoint)
    is_training = isinstance(ckpt.get('state_dict'), dict)
    keys = ('arch', 'model_kwargs', 'epoch', 'top1', 'ema_top1', 'args', 'version')
    meta = {k: ckpt.get(k) for k in keys} if is_training else {}
    if meta.get('arch') not in (None, model_name):
        raise ValueError(f'--model {model_name!r} does not match the checkpoint, which is a {meta["arch"]!r}')
    has_ema = is_training and ckpt.get('state_dict_ema') is not None
    if use_ema and not has_ema:
        raise ValueError(f'--ema: {checkpoint} has no EMA weights (state_dict_ema); use --no-ema')
    meta['weights'] = 'EMA' if has_ema and use_ema is not False else 'model'
    state_dict = checkpoint_state_dict(ckpt, use_ema=meta['weights'] == 'EMA')
    kwargs = dict(meta.get('model_kwargs') or {}, **(model_kwargs or {}))
    kwargs.pop('pretrained', None)
    model = timm.create_model(model_name, **kwargs)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        raise ValueError(f'{checkpoint} does not fit {model_name} with kwargs {kwargs}: {e}') from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f'{checkpoint} does not fit {model_name} with kwargs {kwargs} (pass the training --model-kwargs): '
            f'missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}')
    meta['model_kwargs'] = kwargs  # what the model was built with (the checkpoint's, updated by `model_kwargs`)
    return model.eval(), meta


def checkpoint_top1(meta: Dict[str, Any]) -> Optional[float]:
    """The top-1 the checkpoint records for the published weights (its 'top1', or 'ema_top1' for EMA), if any."""
    return meta.get('ema_top1' if meta.get('weights') == 'EMA' else 'top1')


def model_card(
        model: torch.nn.Module,
        model_name: str,
        repo_id: str,
        meta: Dict[str, Any],
        sha256: str,
        dataset: Optional[str],
        top1: Optional[float],
        top5: Optional[float],
        recipe: Optional[str],
        license: str,
        top1_from_checkpoint: bool = False,
) -> str:
    """README.md of the Hub repository: timm's model card layout plus results, recipe and weights hash.

    Image size and GMACs are those of `model.pretrained_cfg`, i.e. the training run's eval preprocessing.
    """
    input_size = model.pretrained_cfg['input_size']
    args = meta.get('args') or {}
    epoch = meta.get('epoch')
    desc = VARIANTS[model_name].description
    details = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': {
            'Params (M)': f'{count_params(model) / 1e6:.2f}',
            f'GMACs @{input_size[1]}x{input_size[2]}': f'{count_macs(model, input_size) / 1e9:.2f}',
            'Image size': f'{input_size[1]} x {input_size[2]}',
            'Classes': model.num_classes,
        },
        'Architecture': f'{model_name}: ResNet whose bottleneck mixer is {desc} (timm-cada)',
    }
    if dataset:
        details['Dataset'] = dataset
    details['Papers'] = {'Studying inductive biases in image classification task': 'https://arxiv.org/abs/2210.17141'}
    details['Weights'] = f'{meta.get("weights", "model")} weights, model.safetensors sha256 {sha256}'
    usage = f"""```python
import timm
import timm_cada  # registers the timm-cada models (pip install timm-cada)

model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
data_config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**data_config, is_training=False)
logits = model(transform(img).unsqueeze(0))  # img: a PIL image
```
"""
    text = generate_readme(dict(
        tags=['image-classification', 'timm', 'timm-cada'],
        license=license,
        description=f'A {model_name} image classifier from the timm-cada model zoo, the inductive-bias ablation '
                    f'family of arXiv 2210.17141 (our reconstruction of the method from its abstract).',
        details=details,
        usage=usage,
    ), repo_id.split('/')[-1])
    text += '\n## Results\n'
    if top1 is None:
        text += '\nNo evaluation result was recorded for these weights; nothing is claimed about their accuracy.\n'
    else:
        source = 'given at publication' if not top1_from_checkpoint else (
            f'evaluated by train/train.py after {epoch + 1} epochs' if epoch is not None else 'evaluated by train/train.py')
        text += (f'\n| dataset | top-1 (%) | top-5 (%) | eval size | source |\n|---|---|---|---|---|\n'
                 f'| {dataset or "not recorded"} | {top1:.2f} | {"" if top5 is None else f"{top5:.2f}"} '
                 f'| {input_size[1]}x{input_size[2]}, crop {model.pretrained_cfg["crop_pct"]} | {source} |\n')
    text += '\n## Training recipe\n\n'
    text += f'{recipe}\n' if recipe else 'Not recorded with the checkpoint.\n'
    shown = {k: v for k, v in sorted(args.items()) if k not in _PRIVATE_ARGS}
    if shown:
        text += f'\nArguments of the training run (train/train.py):\n\n```json\n{json.dumps(shown, indent=2, default=str)}\n```\n'
    text += f'\n## Citation\n```bibtex\n{CITATION}\n```\n'
    return text


def export(
        checkpoint: Path,
        model_name: str,
        repo_id: str,
        out: Path,
        tag: Optional[str] = None,
        use_ema: Optional[bool] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        dataset: Optional[str] = None,
        top1: Optional[float] = None,
        top5: Optional[float] = None,
        recipe: Optional[str] = None,
        license: str = 'apache-2.0',
        force: bool = False,
) -> Dict[str, Any]:
    """Write DIR (model.safetensors, config.json, README.md) for the checkpoint; return what was written.

    The result has 'sha256' and 'manifest_entry' (the weights manifest entry, revision None until upload;
    None when the checkpoint is not a plain variant of `model_name` or has no dataset / top-1).
    """
    require_timm(SAVE_FOR_HF_TIMM, "weights/publish.py (save_for_hf's data_config argument)")
    # The manifest's own rules, checked before anything is written (the printed entry must load).
    for option, key, value in (('--repo-id', 'hf_hub_id', repo_id), ('--tag', 'tag', tag), ('--top1', 'top1', top1),
                               ('--top5', 'top5', top5), ('--dataset', 'dataset', dataset),
                               ('--recipe', 'recipe', recipe), ('--license', 'license', license)):
        if value is not None:
            check_field(key, value, option)
    existing = [f for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not force:
        raise FileExistsError(f'--out {out} already has {existing}; pass --force to overwrite them')
    model, meta = load_weights(checkpoint, model_name, model_kwargs, use_ema)
    args = meta.get('args') or {}
    dataset = dataset or args.get('dataset') or None
    measured = top1 is None and checkpoint_top1(meta) is not None
    top1 = checkpoint_top1(meta) if top1 is None else top1
    recipe = recipe or args.get('config') or None
    # The preprocessing the weights were trained and evaluated with, not the registry's 224 / 0.95 defaults.
    registered = model.pretrained_cfg
    try:
        data_config = save_local_dir(model, meta.get('args') or {}, meta['model_kwargs'], str(out))
    except RuntimeError as e:
        raise RuntimeError(f'{e}; nothing to publish') from None
    sha256 = file_sha256(out / 'model.safetensors')
    card = model_card(model, model_name, repo_id, meta, sha256, dataset, top1, top5, recipe, license, measured)
    (out / 'README.md').write_text(card, encoding='utf-8')

    model_args = json.loads((out / 'config.json').read_text())['model_args']
    extra = _variant_args(model_name, model_args, model.pretrained_cfg.get('fixed_input_size', False))
    # A manifest entry carries input_size and crop_pct; other preprocessing must come from config.json (hf-hub:).
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v
    extra.update({k: data_config[k] for k in ('interpolation', 'mean', 'std')
                  if as_list(data_config[k]) != as_list(registered.get(k))})
    tag = tag or _dataset_tag(dataset or '')
    entry = None
    if not extra and dataset and top1 is not None:
        entry = dict(model=model_name, tag=tag, hf_hub_id=repo_id, revision=None, sha256=sha256, dataset=dataset,
                     top1=round(float(top1), 3), top5=None if top5 is None else round(float(top5), 3), recipe=recipe,
                     num_classes=model.num_classes, input_size=list(data_config['input_size']),
                     crop_pct=data_config['crop_pct'], license=license)
        entry = {k: v for k, v in entry.items() if v is not None or k == 'revision'}
        for key, value in entry.items():
            if key != 'revision':  # known after the upload
                check_field(key, value, f'the manifest entry of {checkpoint}')
    return dict(out=out, sha256=sha256, extra_args=extra, manifest_entry=entry)


def upload(out: Path, repo_id: str, branch: Optional[str] = None, private: bool = False,
           commit_message: str = 'Add model') -> str:
    """Upload DIR's published files to `repo_id` (created if missing); return the commit hash (Hub revision)."""
    from huggingface_hub import HfApi, get_token
    if get_token() is None:
        raise RuntimeError('No Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)')
    api = HfApi(library_name='timm', library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    info = api.upload_folder(
        repo_id=repo_id, folder_path=out, allow_patterns=list(OUTPUT_FILES), revision=branch,
        commit_message=commit_message)
    return info.oid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True, type=Path,
                        help='train/train.py checkpoint (.pth.tar), bare state dict (.pth) or .safetensors')
    parser.add_argument('--model', required=True, help='timm_cada model name, e.g. resnet50_cada_k7')
    parser.add_argument('--repo-id', required=True, help='Hugging Face Hub repository ORG/NAME')
    parser.add_argument('--out', required=True, type=Path, help='directory to write the repository files to')
    parser.add_argument('--dry-run', action='store_true', help='write and check DIR, upload nothing')
    parser.add_argument('--force', action='store_true', help='overwrite existing files in DIR')
    parser.add_argument('--ema', action=argparse.BooleanOptionalAction, default=None,
                        help='publish the EMA weights (default: when the checkpoint has them)')
    parser.add_argument('--tag', default=None,
                        help='pretrained tag of the manifest entry (model.tag); default from --dataset, e.g. in1k')
    parser.add_argument('--model-kwargs', type=json.loads, default=None,
                        help='JSON timm.create_model kwargs, for checkpoints that do not record them')
    parser.add_argument('--dataset', default=None, help='dataset of the weights, e.g. imagenet-1k')
    parser.add_argument('--top1', type=float, default=None,
                        help='measured top-1 (%%) of the published weights (default: the checkpoint\'s, for non-EMA weights)')
    parser.add_argument('--top5', type=float, default=None, help='measured top-5 (%%)')
    parser.add_argument('--recipe', default=None, help='training recipe (default: the run\'s -c recipe file)')
    parser.add_argument('--license', default='apache-2.0')
    parser.add_argument('--branch', default=None, help='Hub branch to commit to (default: main)')
    parser.add_argument('--private', action='store_true', help='create the repository private')
    parser.add_argument('--commit-message', default='Add model')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = export(
        args.checkpoint, args.model, args.repo_id, args.out, tag=args.tag, use_ema=args.ema,
        model_kwargs=args.model_kwargs, dataset=args.dataset, top1=args.top1, top5=args.top5, recipe=args.recipe,
        license=args.license, force=args.force)
    print(f'wrote {", ".join(OUTPUT_FILES)} to {args.out}')
    print(f'sha256 model.safetensors: {result["sha256"]}')
    if args.dry_run:
        print('dry run: nothing uploaded')
    else:
        result['revision'] = upload(args.out, args.repo_id, args.branch, args.private, args.commit_message)
        print(f'uploaded to https://huggingface.co/{args.repo_id} at revision {result["revision"]}')
    entry = result['manifest_entry']
    if entry is None:
        why = (f'model kwargs / preprocessing {result["extra_args"]} differ from the registered {args.model}'
               if result['extra_args'] else 'no dataset / top-1 recorded (pass --dataset and --top1)')
        print(f'no weights manifest entry: {why}; load it with timm.create_model("hf-hub:{args.repo_id}")')
    else:
        entry['revision'] = result.get('revision')
        print('weights manifest entry (add to timm_cada/weights_manifest.json'
              + (', with the revision of the upload' if args.dry_run else '') + '):')
        print(json.dumps(entry, indent=2))
    return result


if __name__ == '__main__':
    try:
        main()
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')
