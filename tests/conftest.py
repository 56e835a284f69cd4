import torch

# The test tensors are tiny: one intra-op thread is faster than two, and avoids OpenMP spin-waiting
# when the machine's two cores are shared with other processes.
torch.set_num_threads(1)


def load_script(relpath: str):
    """Import a repository script (e.g. 'train/train.py') as a module: the scripts are not in a package."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(f'timm_cada_script_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EvilPickle:
    """Unpickling this creates the file `marker`: stands for any code a malicious pickle would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), 'w')
