""" The timm versions that timm-cada runs on.

pyproject.toml's lower bound on timm is the oldest release on which the models, layers, operators, the analysis
and export commands and the trainer work (`make test` runs the core tests against it). A feature that needs a
newer timm calls `require_timm` where it is used, so an older timm gets a plain error naming the release
instead of a TypeError deep inside timm.
"""
import re
from typing import Tuple

import timm

__all__ = ['require_timm', 'timm_version']


def _release(version: str) -> Tuple[int, ...]:
    """The numeric release of a version string: '1.0.21' -> (1, 0, 21); '1.0.32.dev0' -> (1, 0, 32)."""
    match = re.match(r'\d+(\.\d+)*', version)
    if match is None:
        raise ValueError(f'not a version: {version!r}')
    return tuple(int(part) for part in match.group(0).split('.'))


def timm_version() -> Tuple[int, ...]:
    """The installed timm's release, e.g. (1, 0, 21)."""
    return _release(timm.__version__)


def require_timm(minimum: str, feature: str) -> None:
    """Raise RuntimeError if the installed timm is older than `minimum`, naming `feature` and the upgrade."""
    if timm_version() < _release(minimum):
        raise RuntimeError(f"{feature} needs timm>={minimum}, but timm {timm.__version__} is installed; "
                           f"upgrade it with: pip install 'timm>={minimum}'")
