""" pytest plugin that points timm's own model test suite (tests/test_models.py of timm's sdist) at
the timm_cada models: it registers them before collection and deselects every other model.

TIMM_CADA_SUITE_MODELS: comma-separated model names to keep, or 'all' for every registered model.
"""
import os

import timm

import timm_cada  # noqa: F401  (registers the models before test_models.py builds its parametrisation)

_TIMM_MARKERS = ('base', 'cfg', 'torchscript', 'features', 'fxforward', 'fxbackward', 'timeout(seconds)')


def selected_models():
    ours = set(timm.list_models(module='resnet_cada'))
    wanted = os.environ.get('TIMM_CADA_SUITE_MODELS', 'all')
    if wanted == 'all':
        return ours
    names = {n.strip() for n in wanted.split(',') if n.strip()}
    unknown = names - ours
    if unknown:
        raise ValueError(f'TIMM_CADA_SUITE_MODELS names unregistered models: {sorted(unknown)}')
    return names


def pytest_configure(config):
    for marker in _TIMM_MARKERS:
        config.addinivalue_line('markers', f'{marker}: marker of timm\'s test suite')


def pytest_collection_modifyitems(config, items):
    keep_models = selected_models()
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        (keep if params.get('model_name') in keep_models else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
