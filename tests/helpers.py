""" What several test files share: repository scripts as modules, data and files the tests build, the
operator test cases with their one tolerance, and stand-ins for hostile input. Imported as `helpers`
(pytest puts this folder on the import path). """
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from timm_cada.ops import filter_output_size

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread per training subprocess: tiny models gain nothing from more, and spinning OpenMP
# threads slow everything down when the test machine's cores are shared.
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS='1')

# One model per mixer family: dw, cada (stride 1 and 2), free (identity bases), rel_pos, position,
# local (fixed size), conv (the dense downsampling mixer).
FAMILIES = ['resnet26_dw_k7', 'resnet26_cada_k7', 'resnet26_cada_k7_free', 'resnet26_cada_k7_rpe',
            'resnet26_position_k7', 'resnet26_local_k7', 'resnet26_cada_k7_dsconv3']

# A small and quick train/train.py run: 3 classes told apart by colour, 32 x 32 images, narrow resnet26.
TINY_MODEL = 'resnet26_dw_k3'
TINY = ['--model', TINY_MODEL, '--img-size', '32', '-b', '8', '-j', '0', '--opt', 'adamw', '--lr', '2e-3',
        '--weight-decay', '0', '--warmup-epochs', '0', '--smoothing', '0', '--hflip', '0', '--color-jitter', '0',
        '--scale', '0.8', '1.0', '--log-interval', '1', '--seed', '0', '--device', 'cpu',
        '--model-kwargs', 'channels=(16,32,64,128)', '--device-modules', 'timm_cada']


def load_script(relpath: str):
    """Import a repository script (e.g. 'train/train.py') as a module: the scripts are not in a package."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f'timm_cada_script_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image_folder(root: Path, per_class=(8, 4), size: int = 32) -> Path:
    """3 classes (reddish, greenish, bluish noise images), `per_class` = (train, validation) images each."""
    rng = np.random.default_rng(0)
    for split, n in zip(('train', 'validation'), per_class):
        for c in range(3):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                img[..., c] += 120
                Image.fromarray(img).save(folder / f'{i}.png')
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped idx file of unsigned bytes, as Fashion-MNIST's."""
    import gzip
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Fashion-MNIST's four idx files (names of train/fashion_mnist.py) holding noise images, each with its label
    in its first pixel, `train_per_class` / `test_per_class` per class."""
    names = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
             'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (('train', train_per_class), ('test', test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, (len(labels), 28, 28))
        images[:, 0, 0] = labels
        write_idx(folder / names[split][0], images)
        write_idx(folder / names[split][1], labels)
    return folder


def lay_out_hf_cache(cache: Path, repo_id: str, files: Path, revision: str) -> Path:
    """Put `files` in `cache` as huggingface_hub does: content-addressed blobs, a snapshot of symlinks, refs/main."""
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    blobs, snapshot = repo / 'blobs', repo / 'snapshots' / revision
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        if f.suffix == '.safetensors':  # LFS file: blob named by its sha256
            blob = hashlib.sha256(data).hexdigest()
        else:  # regular git file: blob named by its git object id
            blob = hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()
        (blobs / blob).write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blobs / blob, snapshot))
    return snapshot


class EvilPickle:
    """Unpickling this creates the file `marker`: stands for any code a malicious pickle would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), 'w')


# ------------------------------------------------------------------------------------- operator cases

# Every backend is held to this, in float64, against the reference and against unfold.
OP_TOL = dict(rtol=1e-10, atol=1e-10)

# Window size, stride, dilation, map sizes, heads, bases and broadcast (batch-1) kernel maps.
OP_CASES = [
    dict(k=3), dict(k=7, H=11, W=9), dict(k=5, stride=2), dict(k=3, stride=2, H=8, W=8), dict(k=3, dilation=2),
    dict(k=5, stride=2, dilation=2, H=12, W=11), dict(k=7, H=6, W=5), dict(k=1), dict(k=3, batch1=True),
    dict(k=5, stride=2, batch1=True), dict(k=3, stride=3, H=10, W=10),
    dict(k=3, stride=3, H=9, W=9),  # the last input row is in no window: its gradient is zero
    dict(k=3, B=1, G=8),  # one base, one channel per head
]


def op_inputs(k, N=2, C=8, H=9, W=7, G=2, B=3, stride=1, dilation=1, batch1=False, dtype=torch.float64, seed=0):
    """x, alpha, bases, rel_pos and a free kernel map attn for one case, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    x = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    alpha = torch.randn(1 if batch1 else N, G, B, Ho, Wo, generator=g, dtype=dtype)
    bases = torch.randn(G, B, k, k, generator=g, dtype=dtype)
    rel_pos = torch.randn(G, k, k, generator=g, dtype=dtype)
    attn = torch.randn(1 if batch1 else N, G, k * k, Ho, Wo, generator=g, dtype=dtype)
    return x, alpha, bases, rel_pos, attn


def split_case(case):
    """(k, stride, dilation, the op_inputs kwargs) of one OP_CASES entry."""
    case = dict(case)
    return case.pop('k'), case.get('stride', 1), case.get('dilation', 1), case


def grads(out, inputs, seed=1):
    """Gradients of `out` for `inputs` under a seeded random output gradient."""
    gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, gy)


def perturbed(module, scale=0.3, seed=0):
    """`module` with every parameter moved off its init (fresh mixers are a DW conv of their mean base,
    zero CA logits...), so that every term of its forward counts."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module
