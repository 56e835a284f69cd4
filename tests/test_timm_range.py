""" The range of timm releases that timm-cada declares, and the oldest one, which `make test` also runs the
core tests (`-m core`) against, in a second environment. """
import os
import re
from pathlib import Path

import pytest
import timm

from timm_cada.compat import _release, require_timm, timm_version

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parents[1]


def timm_requirement() -> str:
    """pyproject.toml's requirement on timm, e.g. 'timm>=1.0.21,<1.1'."""
    return re.search(r'"(timm[<>=][^"]*)"', (ROOT / 'pyproject.toml').read_text()).group(1)


def test_installed_timm_is_in_the_declared_range():
    low, high = re.fullmatch(r'timm>=([\d.]+),<([\d.]+)', timm_requirement()).groups()
    assert _release(low) <= timm_version() < _release(high), (timm.__version__, timm_requirement())


def test_the_oldest_run_runs_the_oldest_timm():
    """`make test`'s second run sets TIMM_CADA_EXPECT_TIMM to the lower bound: the environment must hold it."""
    expected = os.environ.get('TIMM_CADA_EXPECT_TIMM')
    if expected is None:
        pytest.skip('not the oldest-timm run of make test')
    assert timm_requirement().startswith(f'timm>={expected},')
    assert timm.__version__ == expected


def test_require_timm_names_the_feature_and_the_release(monkeypatch):
    monkeypatch.setattr(timm, '__version__', '1.0.21')
    require_timm('1.0.21', 'x')
    with pytest.raises(RuntimeError, match=re.escape("publishing needs timm>=1.0.31, but timm 1.0.21 is installed; "
                                                     "upgrade it with: pip install 'timm>=1.0.31'")):
        require_timm('1.0.31', 'publishing')
    monkeypatch.setattr(timm, '__version__', '1.0.32.dev0')
    require_timm('1.0.31', 'publishing')
