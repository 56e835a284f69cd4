#!/usr/bin/env python3
""" Run one of timm's scripts that lacks `--device-modules` (validate.py, benchmark.py, onnx_export.py,
inference.py) with timm-cada's models registered.

A model exists once its package is imported in the same process. timm's train.py does that itself
(`--device-modules timm_cada`, before it builds the model); for the other scripts this launcher imports
timm_cada, then runs SCRIPT as __main__ with the remaining arguments:

    python train/launch.py PATH/TO/pytorch-image-models/validate.py DATA --model resnet50_cada_k7 ...
    torchrun --nproc_per_node 8 train/launch.py PATH/TO/pytorch-image-models/benchmark.py ...

timm's scripts live in its git repository only (not in the wheel); check out the tag that matches
the installed timm, e.g. `git clone -b v$(python -c "import timm; print(timm.__version__)") ...`.
"""
import os
import runpy
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        print('\nusage: launch.py SCRIPT [SCRIPT ARGS ...]')
        sys.exit(0 if argv else 2)
    script = argv[0]
    if not os.path.isfile(script):
        sys.exit(f'launch.py: error: SCRIPT {script!r} is not a file; give the path of a timm script, '
                 f'e.g. pytorch-image-models/train.py')

    import timm_cada  # noqa: F401  (registers the models in timm's registry before the script looks them up)

    # Look like `python SCRIPT ARGS`: the script's argv, and its folder first on the import path.
    sys.argv = [script, *argv[1:]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
