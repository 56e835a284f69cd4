""" train/fashion_mnist.py: the idx files parsed and checked, the held-out split, the ImageFolder, and the
messages for files that are missing, truncated or malformed. Small synthetic idx files stand for Debian's. """
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import fake_fashion_mnist, load_script, write_idx

fmnist = load_script('train/fashion_mnist.py')


@pytest.fixture
def source(tmp_path) -> Path:
    """Fashion-MNIST's four files with 6 train and 2 test images per class."""
    return fake_fashion_mnist(tmp_path / 'source', 6, 2)


def test_parses_the_idx_files(source):
    images, labels = fmnist.read_split(str(source), 'train')
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8 and labels.shape == (60,)
    assert np.array_equal(images[:, 0, 0], labels)
    assert np.bincount(labels).tolist() == [6] * 10


def test_writes_the_image_folder_with_a_stratified_held_out_split(source, tmp_path):
    root = tmp_path / 'out'
    counts = fmnist.write_fashion_mnist(str(root), str(source), val_per_class=2, seed=0)
    assert counts == {'train': 40, 'validation': 20, 'test': 20}
    seen = {}
    for split in fmnist.SPLITS:
        assert sorted(os.listdir(root / split)) == list(fmnist.FOLDERS)  # sorted folders = official label order
        for label, name in enumerate(fmnist.FOLDERS):
            files = sorted((root / split / name).iterdir())
            assert len(files) == {'train': 4, 'validation': 2, 'test': 2}[split]
            for f in files:
                img = Image.open(f)
                assert img.mode == 'L' and img.size == (28, 28) and img.getpixel((0, 0)) == label
                seen.setdefault(split, set()).add(f.name)
    assert not seen['train'] & seen['validation']  # held out, not copied
    stamp = root / fmnist.STAMP
    mtime = stamp.stat().st_mtime_ns
    assert fmnist.write_fashion_mnist(str(root), str(source), val_per_class=2, seed=0) == counts
    assert stamp.stat().st_mtime_ns == mtime  # reused
    fmnist.write_fashion_mnist(str(root), str(source), val_per_class=1, seed=0)
    assert len(list((root / 'validation').rglob('*.png'))) == 10  # other parameters: written again


def test_train_per_class_keeps_a_stratified_subset_outside_the_held_out_split(source, tmp_path):
    full, sub = tmp_path / 'full', tmp_path / 'sub'
    fmnist.write_fashion_mnist(str(full), str(source), val_per_class=2, seed=0)
    counts = fmnist.write_fashion_mnist(str(sub), str(source), val_per_class=2, seed=0, train_per_class=3)
    assert counts == {'train': 30, 'validation': 20, 'test': 20}
    names = lambda root, split: {p.relative_to(root / split) for p in (root / split).rglob('*.png')}
    assert not names(sub, 'train') & names(sub, 'validation')  # the subset is drawn from what is not held out
    assert all(len(os.listdir(sub / 'validation' / c)) == 2 for c in fmnist.FOLDERS)
    again = tmp_path / 'again'
    fmnist.write_fashion_mnist(str(again), str(source), val_per_class=2, seed=0, train_per_class=3)
    assert names(again, 'train') == names(sub, 'train')  # seeded
    assert all(len(os.listdir(sub / 'train' / c)) == 3 for c in fmnist.FOLDERS)
    with pytest.raises(ValueError, match='--train-per-class 5: class tshirt_top has 4 train images left'):
        fmnist.write_fashion_mnist(str(tmp_path / 'big'), str(source), val_per_class=2, train_per_class=5)


def _gzip_bytes(path: Path) -> bytes:
    with gzip.open(path, 'rb') as f:
        return f.read()


@pytest.mark.parametrize('damage, match', [
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), 'not a complete gzip file'),
    (lambda p: p.write_bytes(gzip.compress(_gzip_bytes(p)[:-100])), 'it is truncated or damaged'),
    (lambda p: p.write_bytes(gzip.compress(_gzip_bytes(p) + b'extra')), 'it is truncated or damaged'),
    (lambda p: p.write_bytes(gzip.compress(b'\0\0\x0d\x03' + _gzip_bytes(p)[4:])), 'not an idx file'),
    (lambda p: p.write_bytes(b''), 'not an idx file'),
])
def test_a_damaged_file_is_an_error_naming_it(source, tmp_path, damage, match):
    path = source / fmnist.FILES['train'][0]
    damage(path)
    with pytest.raises(ValueError, match=match) as e:
        fmnist.write_fashion_mnist(str(tmp_path / 'out'), str(source))
    assert str(path) in str(e.value)
    assert not (tmp_path / 'out').exists()


def test_labels_that_do_not_fit(source, tmp_path):
    write_idx(source / fmnist.FILES['test'][1], np.arange(15))
    with pytest.raises(ValueError, match='holds 20 images but .* 15 labels'):
        fmnist.read_split(str(source), 'test')
    write_idx(source / fmnist.FILES['test'][1], np.full(20, 10))
    with pytest.raises(ValueError, match='label 10 is not one of the 10 classes'):
        fmnist.read_split(str(source), 'test')
    write_idx(source / fmnist.FILES['test'][1], np.repeat(np.arange(10), 2))
    with pytest.raises(ValueError, match='--val-per-class 7: class tshirt_top has only 6'):
        fmnist.write_fashion_mnist(str(tmp_path / 'out'), str(source), val_per_class=7)


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='pass --source a folder that holds train-images-idx3-ubyte.gz'):
        fmnist.find_source(str(tmp_path))
    monkeypatch.setattr(fmnist, 'DEFAULT_SOURCE', str(tmp_path / 'absent'))
    monkeypatch.setattr(fmnist.os, 'geteuid', lambda: 1000)  # not root: nothing is installed
    with pytest.raises(FileNotFoundError, match='sudo apt-get install dataset-fashion-mnist'):
        fmnist.find_source()


@pytest.mark.parametrize('lists,calls', [
    (True, ['install']),
    (False, ['install', 'update', 'install']),  # a fresh system without apt's package lists
])
def test_installs_the_debian_package_as_root(tmp_path, monkeypatch, source, lists, calls):
    monkeypatch.setattr(fmnist, 'DEFAULT_SOURCE', str(tmp_path / 'debian'))
    monkeypatch.setattr(fmnist.os, 'geteuid', lambda: 0)
    made = []

    def fake_run(cmd, **kwargs):
        made.append(cmd)
        if cmd[1] == 'install' and not lists and 'update' not in [c[1] for c in made]:
            return fmnist.subprocess.CompletedProcess(cmd, 100, '', 'E: Unable to locate package dataset-fashion-mnist')
        if cmd[1] == 'install':
            os.symlink(source, tmp_path / 'debian')
        return fmnist.subprocess.CompletedProcess(cmd, 0, '', '')

    monkeypatch.setattr(fmnist.subprocess, 'run', fake_run)
    monkeypatch.setattr(fmnist.shutil, 'which', lambda name: '/usr/bin/apt-get')
    assert fmnist.find_source() == str(tmp_path / 'debian')
    assert [c[1] for c in made] == calls and made[-1] == ['apt-get', 'install', '-y', '-q', 'dataset-fashion-mnist']
