""" timm's own model test suite (tests/test_models.py from the timm sdist that matches the installed
timm, fetched from PyPI by pip and cached in .cache/) run against our models.

By default a subset covering every mixer and code path runs; `make test-all` runs every model.
"""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import timm

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / '.cache'

DEFAULT_MODELS = [
    'resnet26_dw_k3', 'resnet26_cada_k7', 'resnet26_cada_k7_free', 'resnet26_cada_k7_rpe',
    'resnet26_cada_k7_dsconv3', 'resnet26_position_k7', 'resnet26_local_k7', 'resnet50_cada',
]


def timm_test_models() -> Path:
    """Path of test_models.py from the sdist of the installed timm version (downloaded once)."""
    version = timm.__version__
    target = CACHE / f'timm-{version}-tests' / 'test_models.py'
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--no-binary', ':all:',
             f'timm=={version}', '-d', tmp], check=True)
        sdist = next(Path(tmp).glob('timm-*.tar.gz'))
        with tarfile.open(sdist) as tar:
            member = tar.getmember(f'timm-{version}/tests/test_models.py')
            data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix('.part')
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target


def run_timm_suite(models: str) -> None:
    env = dict(os.environ, TIMM_CADA_SUITE_MODELS=models, PYTHONPATH=str(ROOT / 'tests'), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', str(timm_test_models()), '-p', 'timm_suite_plugin', '-q',
         '-p', 'no:cacheprovider', '-x', '--rootdir', str(CACHE)],
        cwd=ROOT, env=env, capture_output=True, text=True)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    passed = re.search(r'(\d+) passed', proc.stdout)
    assert passed and int(passed.group(1)) >= 5, tail
    assert ' failed' not in proc.stdout.splitlines()[-1], tail


def test_timm_suite_subset():
    run_timm_suite(','.join(DEFAULT_MODELS))


@pytest.mark.slow
def test_timm_suite_all_models():
    run_timm_suite('all')
