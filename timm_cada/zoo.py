""" Print the registered model zoo as a markdown table: python -m timm_cada.zoo [FILTER] """
import argparse
from typing import Dict, List

import timm

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.profile import count_macs, count_params


def zoo_models(filter: str = '*') -> List[str]:
    """Every model timm_cada registers, optionally filtered by a wildcard pattern."""
    return timm.list_models(filter, module='resnet_cada')


def describe(name: str, feature_channels: bool = True) -> Dict[str, object]:
    """One table row: mixer, kernel size, params and GMACs at 224 (and the feature channels, if asked)."""
    model = timm.create_model(name)
    args = timm_cada.get_variant(name).args
    mixer = args['mixer'] + (f" (ds: {args['ds_mixer']})" if args.get('ds_mixer') else '')
    row = {
        'model': name,
        'mixer': mixer,
        'k': args['kernel_size'],
        'params (M)': f'{count_params(model) / 1e6:.2f}',
        'GMACs @224': f'{count_macs(model) / 1e9:.2f}',
    }
    if feature_channels:
        feat = timm.create_model(name, features_only=True)
        row['feature channels'] = ', '.join(str(c) for c in feat.feature_info.channels())
    return row


def markdown_table(rows: List[Dict[str, object]]) -> str:
    cols = list(rows[0])
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(str(r[c]) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('filter', nargs='?', default='*', help='wildcard on model names, e.g. "resnet50_cada*"')
    args = parser.parse_args()
    names = zoo_models(args.filter)
    if not names:
        parser.error(f'filter {args.filter!r} matches no timm_cada model; e.g. "resnet50_cada*", "*_k7", or see '
                     f'`python -m timm_cada.zoo` for all {len(zoo_models())}')
    print(markdown_table([describe(name) for name in names]))


if __name__ == '__main__':
    main()
