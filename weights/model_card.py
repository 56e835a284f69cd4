#!/usr/bin/env python3
""" Regenerate the model table and published weights of MODEL_CARD.md from the registry, the weights manifest and the benchmarks.

    python weights/model_card.py           # rewrite the table between the markers in MODEL_CARD.md
    python weights/model_card.py --check   # exit 1 if the table is out of date

Every registered timm_cada model gets one row: mixer, the ablation axis it belongs to, params and GMACs
(timm_cada.profile), CPU throughput from benchmarks/RESULTS.md when that file measures it, and top-1 only
from the weights manifest, i.e. measured results with their dataset.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.models import VARIANTS
from timm_cada.pretrained import WeightsEntry, load_manifest
from timm_cada.zoo import describe, markdown_table, zoo_models

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / 'MODEL_CARD.md'
RESULTS = ROOT / 'benchmarks' / 'RESULTS.md'
START, END = '<!-- model-table:start (python weights/model_card.py) -->', '<!-- model-table:end -->'
NOT_MEASURED = 'not measured yet'

def ablation_axis(name: str) -> str:
    """The axis of the paper's ablation a model belongs to, from the variant table (timm_cada.VARIANTS)."""
    if name not in VARIANTS:
        raise ValueError(f'no ablation axis known for model {name!r}: it is not in timm_cada.VARIANTS')
    variant = VARIANTS[name]
    if variant.alias_of is not None:
        return f'default CADA (same as {variant.alias_of})'
    return variant.axis_label


def _is_rate(header: str) -> bool:
    return any(t in header for t in ('img/s', 'img_s', 'throughput'))


def measured_throughput(results: Path = RESULTS) -> Dict[str, str]:
    """Model -> inference throughput cell of the first markdown table in `results` that has a 'model' column
    and a throughput column ('img/s', 'img_s' or 'throughput' in its header, preferring one that says
    'infer'); empty when the file does not exist."""
    if not results.is_file():
        return {}
    found: Dict[str, str] = {}
    header: Optional[List[str]] = None
    for line in results.read_text(encoding='utf-8').splitlines():
        cells = [c.strip().strip('`') for c in line.strip().strip('|').split('|')] if line.lstrip().startswith('|') else None
        if cells is None:
            header = None
        elif header is None:
            header = [c.lower() for c in cells]
        elif not set(''.join(cells)) <= set('-: '):
            cols = sorted((i for i, h in enumerate(header) if _is_rate(h)), key=lambda i: 'infer' not in header[i])
            if 'model' in header and cols and len(cells) == len(header):
                found.setdefault(cells[header.index('model')], cells[cols[0]])
        if found and cells is None:
            break
    return found


def _accuracy(entries: List[WeightsEntry]) -> str:
    if not entries:
        return '—'
    return '; '.join(f'{e.top1:.2f} ({e.dataset}, `.{e.tag}`)' for e in entries)


def table_rows(manifest: Dict[str, WeightsEntry], throughput: Dict[str, str]) -> List[Dict[str, object]]:
    rows = []
    for name in zoo_models():
        row = describe(name, feature_channels=False)
        rows.append({
            **{k: row[k] for k in ('model', 'mixer', 'k')},
            'ablation axis': ablation_axis(name),
            **{k: row[k] for k in ('params (M)', 'GMACs @224')},
            'CPU img/s': throughput.get(name, NOT_MEASURED),
            'top-1 (%)': _accuracy([e for e in manifest.values() if e.model == name]),
        })
    return rows


def published_weights(manifest: Dict[str, WeightsEntry]) -> List[str]:
    """Lines of the 'Published weights' list: one per manifest entry, or the plain statement that none exist."""
    if not manifest:
        return ['**None.** No model of this family has been trained and published yet, so no accuracy figure '
                'exists for any of them, on ImageNet or on any other dataset; `pretrained=True` raises '
                '`NoPretrainedWeightsError` for every model.']
    lines = []
    for e in manifest.values():
        top5 = f', top-5 {e.top5:.2f}%' if e.top5 is not None else ''
        lines.append(
            f'- `{e.name}`: {e.dataset}, top-1 {e.top1:.2f}%{top5} at {e.input_size[1]}x{e.input_size[2]}; '
            f'recipe: {e.recipe or "not recorded"}; `{e.hf_hub_id}` at revision `{e.revision}`, '
            f'{e.filename} sha256 `{e.sha256}`, license {e.license}.')
    return lines


def table_section(rows: List[Dict[str, object]], throughput_measured: bool, manifest: Dict[str, WeightsEntry]) -> str:
    notes = [
        'Params and GMACs at 224 x 224 with 1000 classes (`timm_cada.profile`; CADA-family mixers counted as '
        'their operator is defined).',
        'CPU img/s: eager inference throughput in NCHW (batch 16, 224 x 224) from the first model table of '
        '`benchmarks/RESULTS.md`, which names the machine, the run and the code; its section "CADA against DW of '
        'the same k" times the current kernels in both layouts, and channels_last is the faster one for every '
        'model there.' if throughput_measured else
        'CPU img/s: not measured yet (no `benchmarks/RESULTS.md` with a throughput column).',
        'top-1: only results measured on published weights, with their dataset and pretrained tag (details in '
        '"Published weights"); "—" means no weights exist for that model.',
    ]
    return '\n'.join(
        [START, '', markdown_table(rows), ''] + [f'- {n}' for n in notes]
        + ['', '### Published weights', ''] + published_weights(manifest) + ['', END])


def render(card: str, section: str) -> str:
    if card.count(START) != 1 or card.count(END) != 1:
        raise ValueError(f'{CARD} must contain the markers {START!r} and {END!r} once each')
    head, rest = card.split(START)
    return head + section + rest.split(END, 1)[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='exit 1 if MODEL_CARD.md is out of date')
    args = parser.parse_args(argv)
    throughput = measured_throughput()
    manifest = load_manifest()
    section = table_section(table_rows(manifest, throughput), bool(throughput), manifest)
    card = CARD.read_text(encoding='utf-8')
    new = render(card, section)
    if args.check:
        if new != card:
            print(f'{CARD} is out of date: run python weights/model_card.py')
            return 1
        return 0
    CARD.write_text(new, encoding='utf-8')
    print(f'wrote the model table of {CARD} ({len(throughput)} throughput figures)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
