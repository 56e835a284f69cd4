""" train/train.py as an unlucky user meets it: every image mode, run folders that are never overwritten, resume
that is bit-exact (also after kills at random points and full disks), and bad input stopped before anything is
written, with the option named. """
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image

import timm
from timm.data import ImageDataset
from timm_cada.checkpoint import TMP_SUFFIX, read_checkpoint
from image_data import BadImageError, StrictImageDataset, convert_image  # train/ (pytest's pythonpath)
from options import parse_kwarg
import run_folder
from runs import KEEP_FREED_MEMORY
from helpers import REPO, SUBPROCESS_ENV, TINY, load_script, make_image_folder

TRAIN = REPO / 'train' / 'train.py'
trainer = load_script('train/train.py')

# Every random draw of a run: flips, colour jitter, random erasing, mixup, drop path, random crops, shuffling
# in a loader worker. A resumed run must make each of them as the run it continues.
AUG = ['--hflip', '0.5', '--color-jitter', '0.4', '--reprob', '0.25', '--mixup', '0.2', '--drop-path', '0.1',
       '--scale', '0.5', '1.0']
EPOCHS = 3


def run_train(argv):
    return trainer.run(trainer.parse_args([str(a) for a in argv]))


def read_summary(out: Path) -> list:
    import csv
    with open(out / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def assert_run_files_agree(out: Path) -> None:
    """summary.csv, last.pth.tar and model_best.pth.tar tell one story, and no temporary file is left."""
    assert not list(out.glob(f'*{TMP_SUFFIX}')), list(out.glob(f'*{TMP_SUFFIX}'))
    last = read_checkpoint(out / 'last.pth.tar')
    assert [r['epoch'] for r in last['history']] == list(range(last['epoch'] + 1))
    assert read_summary(out) == [{k: str(v) for k, v in row.items()} for row in last['history']]
    best = read_checkpoint(out / 'model_best.pth.tar')
    assert best['epoch'] == last['best']['epoch'] and best['metric'] == last['best']['metric']
    assert best['history'] == last['history'][:best['epoch'] + 1]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights, optimizer state, summaries and best checkpoints."""
    la, lb = read_checkpoint(a / 'last.pth.tar'), read_checkpoint(b / 'last.pth.tar')
    assert la['epoch'] == lb['epoch']
    differ = [k for k in la['state_dict'] if not torch.equal(la['state_dict'][k], lb['state_dict'][k])]
    assert not differ, f'{len(differ)} of {len(la["state_dict"])} tensors differ, e.g. {differ[:3]}'
    for (ka, va), (kb, vb) in zip(la['optimizer']['state'].items(), lb['optimizer']['state'].items()):
        for name in va:
            assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name])), (ka, name)
    assert la['history'] == lb['history'] and la['best'] == lb['best']
    assert (a / 'summary.csv').read_text() == (b / 'summary.csv').read_text()


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def argv(data) -> list:
    """A 3-epoch run drawing every kind of random number, with a loader worker."""
    return ['--data-dir', data, '--epochs', EPOCHS, *TINY, *AUG, '-j', '1']


@pytest.fixture(scope='module')
def reference(argv, tmp_path_factory) -> Path:
    """The run never stopped."""
    out = tmp_path_factory.mktemp('reference') / 'run'
    run_train([*argv, '--output', out])
    return out


# ---- image modes ----

def _save_mode_zoo(folder: Path) -> dict:
    """One image per PIL mode that real datasets hold; returns file name -> what its pixels must decode to."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).convert('CMYK').save(folder / 'cmyk.jpg', quality=100)
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 255, np.uint8)]), 'RGBA').save(folder / 'rgba.png')
    Image.fromarray(np.full((32, 32), 90, np.uint8), 'L').save(folder / 'grey.jpg', quality=100)
    palette = Image.fromarray(rgb).convert('P', palette=Image.Palette.ADAPTIVE)
    palette.save(folder / 'palette.png', transparency=255)  # a transparent index, as GIFs and PNGs have
    # 16 bits: 40000 / 65535 of full scale is 156 in 8 bits; clipping would give 255, wrapping 64.
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(folder / 'sixteen.png')
    return {'cmyk.jpg': (200, 100, 50), 'rgba.png': (200, 100, 50), 'grey.jpg': (90, 90, 90),
            'palette.png': (200, 100, 50), 'sixteen.png': (156, 156, 156)}


def test_every_image_mode_opens_as_rgb_and_16_bit_is_scaled(tmp_path):
    expected = _save_mode_zoo(tmp_path / 'train' / 'c0')
    dataset = StrictImageDataset.from_dataset(ImageDataset(str(tmp_path / 'train')), 'RGB')
    assert Image.open(tmp_path / 'train' / 'c0' / 'sixteen.png').mode.startswith('I')  # really 16-bit
    for i in range(len(dataset)):
        img, _ = dataset[i]
        name = os.path.basename(dataset.reader.filename(i))
        assert img.mode == 'RGB' and img.size == (32, 32), name
        assert np.abs(np.asarray(img, np.int16) - expected[name]).max() <= 2, name  # JPEG rounds a little
    grey = StrictImageDataset.from_dataset(ImageDataset(str(tmp_path / 'train')), 'L')
    assert {grey[i][0].mode for i in range(len(grey))} == {'L'}


def test_wide_integer_images_are_scaled_not_clipped():
    img = Image.fromarray(np.array([[0, 257, 32768, 65535]], np.uint16))
    assert np.asarray(convert_image(img, 'L')).tolist() == [[0, 1, 128, 255]]


def test_training_on_mixed_modes_rgb_and_one_channel(data, tmp_path):
    mixed = tmp_path / 'mixed'
    shutil.copytree(data, mixed)
    _save_mode_zoo(mixed / 'train' / 'class0')
    _save_mode_zoo(mixed / 'validation' / 'class1')
    for extra, in_chans in (([], 3), (['--input-size', 1, 32, 32], 1)):
        out = tmp_path / f'run{in_chans}'
        args = [a for a in TINY if a != '32' and a != '--img-size']
        model, _ = run_train(['--data-dir', mixed, '--output', out, '--epochs', 1, *args,
                              *(extra or ['--img-size', 32])])
        assert model.conv1.weight.shape[1] == in_chans
        ckpt = read_checkpoint(out / 'last.pth.tar')
        assert ckpt['model_kwargs'].get('in_chans', 3) == in_chans
        assert ckpt['args']['input_img_mode'] == ('L' if in_chans == 1 else 'RGB')


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_truncated_image_is_named_or_skipped_and_counted(data, tmp_path):
    bad_data = tmp_path / 'data'
    shutil.copytree(data, bad_data)
    bad = bad_data / 'train' / 'class1' / '2.png'
    _truncate(bad)
    dataset = StrictImageDataset.from_dataset(ImageDataset(str(bad_data / 'train')), 'RGB')
    index = [os.path.abspath(dataset.reader.filename(i, absolute=True)) for i in range(len(dataset))].index(str(bad))
    with pytest.raises(BadImageError, match=f'Cannot read image file {bad}.*--skip-bad-images'):
        dataset[index]
    skipping = StrictImageDataset.from_dataset(ImageDataset(str(bad_data / 'train')), 'RGB', skip_bad=True)
    assert skipping[index][1] == skipping[index + 1][1] and skipping.skipped == 1
    preloaded = StrictImageDataset.from_dataset(ImageDataset(str(bad_data / 'train')), 'RGB', preload=True)
    with pytest.raises(BadImageError, match=f'Cannot read image file {bad}'):  # when met, as without preload
        preloaded[index]
    preloaded_skipping = StrictImageDataset.from_dataset(
        ImageDataset(str(bad_data / 'train')), 'RGB', skip_bad=True, preload=True)
    assert np.array_equal(preloaded_skipping[index][0], skipping[index][0]) and preloaded_skipping.skipped == 1

    argv = ['--data-dir', bad_data, '--epochs', 2, *TINY]
    with pytest.raises(BadImageError, match=str(bad)):
        run_train([*argv, '--output', tmp_path / 'strict'])
    run_train([*argv, '--output', tmp_path / 'skip', '--skip-bad-images'])
    results = json.loads((tmp_path / 'skip' / 'results.json').read_text())
    assert results['skipped_images'] == 2  # met once per epoch
    proc = subprocess.run([sys.executable, str(TRAIN), *map(str, argv), '--output', str(tmp_path / 'cli'), '-j', '1'],
                          capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert proc.returncode == 1 and f'Cannot read image file {bad}' in proc.stderr.splitlines()[-1]


# ---- run folders ----

def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_new_run_never_overwrites_a_run_folder(reference, argv, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(reference, out)
    before = _snapshot(out)
    with pytest.raises(trainer.InputError, match=f'--output: {out} already holds a run.*--resume {out}/last.pth.tar'):
        run_train([*argv, '--output', out])
    other = tmp_path / 'other'
    shutil.copytree(reference, other)
    with pytest.raises(trainer.InputError, match='holds another run'):
        run_train([*argv, '--output', out, '--resume', other / 'last.pth.tar'])
    assert _snapshot(out) == before


def test_default_output_takes_the_next_free_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ['--data-dir', data, '--epochs', 1, *TINY]
    run_train(argv)
    (tmp_path / 'output' / 'train' / 'resnet26_dw_k3-1').mkdir()
    (tmp_path / 'output' / 'train' / 'resnet26_dw_k3-1' / 'args.yaml').write_text('{}')  # started, no epoch
    run_train(argv)
    run_train(argv)
    for name in ('resnet26_dw_k3', 'resnet26_dw_k3-1', 'resnet26_dw_k3-2'):
        assert (tmp_path / 'output' / 'train' / name / 'results.json').is_file(), name


# ---- exact resume ----

def test_stopped_and_resumed_run_is_the_uninterrupted_run(reference, argv, tmp_path):
    out = tmp_path / 'split'
    run_train([*argv, '--output', out, '--stop-after', 1])
    run_train([*argv, '--output', out, '--stop-after', 1, '--resume', out / 'last.pth.tar'])
    run_train([*argv, '--output', out, '--resume', out / 'last.pth.tar'])
    assert_same_run(reference, out)
    assert_run_files_agree(out)


def test_preloaded_images_give_the_same_run(reference, argv, tmp_path):
    """--preload-images decodes every image once instead of once per epoch; the run is bit for bit the same
    (in a loader worker too)."""
    out = tmp_path / 'preloaded'
    run_train([*argv, '--output', out, '--preload-images'])
    assert_same_run(reference, out)


def test_study_environment_gives_the_same_run(data, tmp_path):
    """runs.KEEP_FREED_MEMORY (glibc's allocator keeping freed memory) changes the speed of a train.py process only: a
    CADA model's run is bit for bit the one without it."""
    argv = ['--data-dir', data, '--epochs', 1, *TINY, '--model', 'resnet26_cada_k3', '--channels-last']
    outs = []
    for name, env in (('plain', {}), ('fast', KEEP_FREED_MEMORY)):
        outs.append(tmp_path / name)
        subprocess.run([sys.executable, str(REPO / 'train' / 'train.py'), *map(str, argv), '--output', str(outs[-1])],
                       env={**SUBPROCESS_ENV, **env}, check=True, capture_output=True)
    assert_same_run(*outs)


def test_resume_in_another_process_count_keeps_the_global_batch(reference, argv, tmp_path, caplog):
    """A 2-process checkpoint resumed in 1 process: refused unless -b keeps the global batch, then a warning."""
    out = tmp_path / 'run'
    shutil.copytree(reference, out)
    ckpt = read_checkpoint(out / 'last.pth.tar')
    ckpt['epoch'], ckpt['history'] = 0, ckpt['history'][:1]
    ckpt['best'] = {'epoch': 0, 'metric': ckpt['history'][0]['eval_top1']}
    ckpt['args']['world_size'] = 2
    ckpt['rng_state'] = ckpt['rng_state'] * 2
    torch.save(ckpt, out / 'last.pth.tar')
    with pytest.raises(trainer.InputError, match=r'global batch of 16 .*\(-b 16 with 1 process'):
        run_train([*argv, '--output', out, '--resume', out / 'last.pth.tar'])
    caplog.set_level(logging.WARNING)
    batch16 = [a if a != '8' else '16' for a in argv]
    run_train([*batch16, '--output', out, '--resume', out / 'last.pth.tar', '--stop-after', 1])
    assert 'the global batch is kept, but the random streams differ' in caplog.text


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(argv, out: Path) -> None:
    env = dict(SUBPROCESS_ENV, GLOO_SOCKET_IFNAME='lo')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
         '--master_port', str(_free_port()), str(TRAIN), *map(str, argv), '--output', str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_ddp_stopped_and_resumed_run_is_the_uninterrupted_run(data, tmp_path):
    argv = ['--data-dir', data, '--epochs', 2, *TINY, *AUG, '-b', '4']
    _torchrun(argv, tmp_path / 'full')
    _torchrun([*argv, '--stop-after', 1], tmp_path / 'split')
    assert len(read_checkpoint(tmp_path / 'split' / 'last.pth.tar')['rng_state']) == 2  # one per rank
    _torchrun([*argv, '--resume', tmp_path / 'split' / 'last.pth.tar'], tmp_path / 'split')
    assert_same_run(tmp_path / 'full', tmp_path / 'split')
    assert_run_files_agree(tmp_path / 'split')


# ---- kills and full disks ----

def test_kill_between_the_files_of_an_epoch_is_repaired(reference, argv, tmp_path):
    """A kill after last.pth.tar was renamed but before model_best and summary.csv were: the next start
    rebuilds both from last.pth.tar (the best epoch is not lost) and removes the temporary files."""
    out = tmp_path / 'run'
    run_train([*argv, '--output', out, '--stop-after', 1])
    (out / 'model_best.pth.tar').unlink()
    (out / f'model_best.pth.tar{TMP_SUFFIX}').write_bytes(b'half a checkpoint')
    (out / f'summary.csv{TMP_SUFFIX}').write_bytes(b'epoch,')
    rows = (out / 'summary.csv').read_text().splitlines()
    (out / 'summary.csv').write_text('\n'.join([*rows, rows[1], rows[1].replace('0,', '1,', 1)]) + '\n')
    run_train([*argv, '--output', out, '--stop-after', 0, '--resume', out / 'last.pth.tar'])
    assert_run_files_agree(out)
    assert read_checkpoint(out / 'model_best.pth.tar')['epoch'] == 0
    run_train([*argv, '--output', out, '--resume', out / 'last.pth.tar'])
    assert_same_run(reference, out)


class _Fault:
    """Stands for a full disk: the `call`-th call writes a little to its output file, then raises ENOSPC."""

    def __init__(self, fn, call: int, path_arg: Optional[int]):
        self.fn, self.call, self.path_arg, self.calls = fn, call, path_arg, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls != self.call:
            return self.fn(*args, **kwargs)
        if self.path_arg is not None:
            with open(args[self.path_arg], 'wb') as f:
                f.write(b'partial')
        raise OSError(errno.ENOSPC, 'No space left on device', str(args[self.path_arg or 0]))


@pytest.mark.parametrize('target, call, path_arg, finished', [
    ('torch.save', 2, 1, 1),  # epoch 1's last.pth.tar: the folder keeps epoch 0
    ('link_or_copy', 1, 1, 0),  # epoch 0's model_best: no epoch finished
    ('_write_summary', 2, 0, 1),  # epoch 1's summary.csv
    ('atomic_file', 1, None, 0),  # args.yaml, before the first epoch
    ('atomic_file', 2, None, EPOCHS),  # results.json, after the last epoch
])
def test_full_disk_keeps_the_last_finished_epoch_and_resume_is_exact(
        reference, argv, tmp_path, monkeypatch, target, call, path_arg, finished):
    out = tmp_path / 'run'
    owner = torch if target == 'torch.save' else run_folder
    name = target.split('.')[-1]
    monkeypatch.setattr(owner, name, _Fault(getattr(owner, name), call, path_arg))
    with pytest.raises(trainer.RunError, match='No space left on device.*free space'):
        run_train([*argv, '--output', out])
    monkeypatch.undo()
    assert not list(out.glob(f'*{TMP_SUFFIX}'))
    if finished:
        assert read_checkpoint(out / 'last.pth.tar')['epoch'] == finished - 1
        assert_run_files_agree(out)
        run_train([*argv, '--output', out, '--resume', out / 'last.pth.tar'])
    else:
        assert not (out / 'last.pth.tar').exists()
        run_train([*argv, '--output', out])  # nothing finished: the folder takes a new run
    assert_same_run(reference, out)
    assert json.loads((out / 'results.json').read_text())['epochs'] == EPOCHS


def test_run_error_stops_the_cli_with_its_message(data, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'args.yaml').mkdir()  # args.yaml cannot be written
    proc = subprocess.run([sys.executable, str(TRAIN), '--data-dir', str(data), '--output', str(out), '--epochs', '1',
                           *TINY], capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(f'train.py: error: cannot prepare the run folder {out}')


def test_kill_loop(data, tmp_path):
    """SIGKILL at random points, over and over, each start resuming the folder's run: after every kill the files
    agree unless the kill fell inside an epoch's commit (then .tmp files say so, and the next start repairs it);
    the run that finishes at last has the weights of the run never killed."""
    argv = ['--data-dir', data, '--epochs', 6, *TINY, *AUG]
    cmd = lambda out: [sys.executable, str(TRAIN), *map(str, argv), '--output', str(out)] + (
        ['--resume', str(out / 'last.pth.tar')] if (out / 'last.pth.tar').exists() else [])
    reference = tmp_path / 'reference'
    subprocess.run(cmd(reference), check=True, capture_output=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    # One epoch's time, from args.yaml (written once the imports and set-up are done) to results.json.
    epoch_time = ((reference / 'results.json').stat().st_mtime - (reference / 'args.yaml').stat().st_mtime) / 6
    out = tmp_path / 'killed'
    rng = random.Random(0)
    kills = 0
    while kills < 4:
        launched = time.time()
        proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                                env=SUBPROCESS_ENV, start_new_session=True)
        while proc.poll() is None and not (
                (out / 'args.yaml').exists() and (out / 'args.yaml').stat().st_mtime >= launched):
            time.sleep(0.01)
        try:  # a random point of the next one and a half epochs: training, validating or committing
            proc.wait(timeout=rng.uniform(0, 1.5) * epoch_time)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, f'train.py failed ({proc.returncode}) in {out}'
        if (out / 'results.json').exists():
            break
        if (out / 'last.pth.tar').exists() and not list(out.glob(f'*{TMP_SUFFIX}')):
            assert_run_files_agree(out)
    assert kills >= 2, kills
    subprocess.run(cmd(out), check=True, capture_output=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert_run_files_agree(out)
    assert_same_run(reference, out)


# ---- bad input: the option named, nothing written ----

@pytest.mark.parametrize('extra, fragments', [
    (['--epochs', '0'], ['--epochs must be an integer >= 1, got 0']),
    (['--input-size', '3', '0', '0'], ['--input-size must be three integers >= 1']),
    (['--lr', '-1'], ['--lr must be a finite number > 0, got -1.0']),
    (['-b', '0'], ['--batch-size must be an integer >= 1, got 0']),
    (['--opt', 'adamw2'], ["--opt: unknown optimizer 'adamw2'", 'adamw']),
    (['--sched', 'cosin'], ["--sched must be one of 'cosine'", "got 'cosin'"]),
    (['--eval-metric', 'acc'], ["--eval-metric must be one of 'top1', 'top5', 'loss'"]),
    (['--smoothing', '1.5'], ['--smoothing must be a number in [0, 1)']),
    (['--hflip', '2'], ['--hflip must be a probability in [0, 1]']),
    (['--scale', '0.9', '0.1'], ['--scale must be two numbers 0 < MIN <= MAX <= 1']),
    (['--mean', '0.5', '0.5'], ['--mean must be 1 or 3 numbers']),
    (['--input-img-mode', 'XYZ'], ["--input-img-mode: 'XYZ' is not a PIL image mode"]),
    (['--input-img-mode', 'RGBA'], ['--input-img-mode: RGBA has 4 band(s), but the model has 3']),
    (['--in-chans', '4'], ['--mean / --std: a model with 4 input channels needs them']),
    (['--in-chans', '1', '--input-size', '3', '32', '32'], ['--in-chans 1 and --input-size 3 32 32 disagree']),
    (['--device', 'nodevice'], ['--device']),
    (['--warm-start', 'missing.pth'], ['--warm-start', 'missing.pth']),
    (['--warm-start', 'not_a_model'], ['--warm-start', 'neither an existing checkpoint file nor a timm model']),
    (['--model-kwargs', 'no_such_kwarg=1'], ['--model-kwargs / model options', 'no_such_kwarg']),
    (['--device-modules', 'no_such_module'], ["--device-modules: cannot import 'no_such_module'"]),
    (['--preload-images', '--dataset', 'hfds/fashion_mnist'], ['--preload-images: applies to a folder dataset']),
])
def test_bad_option_is_named_before_anything_is_written(data, tmp_path, extra, fragments):
    out = tmp_path / 'out'
    with pytest.raises(trainer.InputError) as e:
        run_train(['--data-dir', data, '--output', out, *TINY, *extra])
    for fragment in fragments:
        assert fragment in str(e.value)
    assert not out.exists()


def test_output_naming_a_file(data, tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(trainer.InputError, match='--output: .* is a file'):
        run_train(['--data-dir', data, '--output', tmp_path / 'file', *TINY])


def _edited_checkpoint(reference: Path, folder: Path, **changes) -> Path:
    shutil.copytree(reference, folder)
    ckpt = read_checkpoint(folder / 'last.pth.tar')
    ckpt.update(changes)
    torch.save(ckpt, folder / 'last.pth.tar')
    return folder / 'last.pth.tar'


@pytest.mark.parametrize('edit, extra, match', [
    (dict(epoch=-5), [], 'records epoch -5, not the index'),
    (dict(epoch=99), [], 'has finished 100 epochs, more than --epochs 3'),
    (dict(epoch=1), [], 'its history does not list epochs 0..1'),
    (dict(arch='resnet26_cada_k7'), [], "is a 'resnet26_cada_k7' checkpoint"),
    (dict(), ['--model-kwargs', 'channels=(16,32,64,64)'], 'built with other options (channels'),
    (dict(), ['--drop', '0.1'], "drop_rate: None in the checkpoint, 0.1 now"),
    (dict(classes=['a', 'b', 'c']), [], 'trained on other classes'),
])
def test_resume_of_a_checkpoint_that_does_not_fit(reference, argv, tmp_path, edit, extra, match):
    last = _edited_checkpoint(reference, tmp_path / 'run', **edit)
    before = _snapshot(tmp_path / 'run')
    with pytest.raises(trainer.InputError, match=re.escape(match) if '(' in match else match):
        run_train([*argv, '--output', tmp_path / 'run', '--resume', last, *extra])
    assert _snapshot(tmp_path / 'run') == before


def test_truncated_resume_file(reference, argv, tmp_path):
    shutil.copytree(reference, tmp_path / 'run')
    _truncate(tmp_path / 'run' / 'last.pth.tar')
    with pytest.raises(trainer.InputError, match='--resume.*truncated'):
        run_train([*argv, '--output', tmp_path / 'run', '--resume', tmp_path / 'run' / 'last.pth.tar'])
    with pytest.raises(trainer.InputError, match='does not exist'):
        run_train([*argv, '--output', tmp_path / 'new', '--resume', tmp_path / 'missing.pth.tar'])


@pytest.mark.parametrize('rename', ['renamed', 'extra'])
def test_validation_classes_must_be_train_classes_by_name(data, tmp_path, rename):
    bad = tmp_path / 'data'
    shutil.copytree(data, bad)
    if rename == 'renamed':  # same count, so labels would silently shift
        (bad / 'validation' / 'class0').rename(bad / 'validation' / 'class9')
    else:
        shutil.copytree(bad / 'validation' / 'class0', bad / 'validation' / 'class3')
    with pytest.raises(trainer.InputError, match="the 'validation' split's classes differ") as e:
        run_train(['--data-dir', bad, '--output', tmp_path / 'out', *TINY])
    assert ('class9' if rename == 'renamed' else 'class3') in str(e.value)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('recipe, match', [
    ('epochs: [3\n', 'is not valid YAML'),
    ('epochs: ten\n', "epochs: 'ten' is not an integer"),
    ('lr: [0.1, 0.2]\n', 'lr: .* is not a number'),
    ('scale: 0.5\n', 'scale: 0.5 is not a list of one or more numbers'),
    ('input_size: [3, 32]\n', 'input_size: .* is not a list of 3 integers'),
    ('model_ema: 1\n', 'model_ema: 1 is not true or false'),
    ('model_kwargs: x=1\n', 'model_kwargs: .* is not a mapping'),
    ('- epochs\n', 'must be a mapping'),
])
def test_malformed_recipe(tmp_path, capsys, recipe, match):
    path = tmp_path / 'recipe.yaml'
    path.write_text(recipe)
    with pytest.raises(SystemExit) as e:
        trainer.parse_args(['-c', str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and re.search(match, err), err


def test_readme_model_kwargs_forms_parse():
    assert parse_kwarg('mixer_args=dict(num_bases=4)') == ('mixer_args', {'num_bases': 4})
    assert parse_kwarg("mixer_args={'num_bases': 4}") == ('mixer_args', {'num_bases': 4})
    assert parse_kwarg('channels=(32,64,128,256)') == ('channels', (32, 64, 128, 256))
    assert parse_kwarg('mixer=box') == ('mixer', 'box')
    assert parse_kwarg('kernel_size=5') == ('kernel_size', 5)
    assert parse_kwarg('drop_rate=0.1') == ('drop_rate', 0.1)
    assert parse_kwarg('global_pool=') == ('global_pool', '')
    assert parse_kwarg('mixer_args=dict(num_bases=4, ca_norm="softmax")') == (
        'mixer_args', {'num_bases': 4, 'ca_norm': 'softmax'})
    for bad, match in (('noequals', 'expected KEY=VALUE'), ('1x=2', 'expected KEY=VALUE'),
                       ('x=__import__("os").system("true")', 'calls something'), ('x=dict(1, a=2)', 'only KEY=VALUE')):
        with pytest.raises(ValueError, match=match):
            parse_kwarg(bad)


def test_readme_model_kwargs_reach_the_model(data, tmp_path):
    for i, form in enumerate(('mixer_args=dict(num_bases=4)', "mixer_args={'num_bases':4}")):
        model, _ = run_train(['--data-dir', data, '--output', tmp_path / f'out{i}', '--epochs', 1, '--stop-after', 0,
                              *TINY, '--model', 'resnet26_cada_k3', '--model-kwargs', 'channels=(16,32,64,128)', form])
        assert {m.num_bases for m in model.modules() if type(m).__name__ == 'Cada2d'} == {4}
    proc = subprocess.run([sys.executable, str(TRAIN), '--model-kwargs', 'x=open("f")'], capture_output=True,
                          text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=120)
    assert proc.returncode == 2 and 'calls something' in proc.stderr


# ---- smaller tools ----

def test_zoo_filter_that_matches_nothing():
    proc = subprocess.run([sys.executable, '-m', 'timm_cada.zoo', 'nomatch*'], capture_output=True, text=True,
                          cwd=REPO, env=SUBPROCESS_ENV, timeout=120)
    assert proc.returncode == 2 and "filter 'nomatch*' matches no timm_cada model" in proc.stderr


@pytest.mark.parametrize('out_indices', [(5,), (-6,), 0, 6, (), (1.0,)])
def test_features_only_out_indices_out_of_range(out_indices):
    with pytest.raises(ValueError, match='out_indices=.*accepted: an int n'):
        timm.create_model('resnet26_dw_k3', features_only=True, out_indices=out_indices)
    assert timm.create_model('resnet26_dw_k3', features_only=True, out_indices=(-1,)).feature_info.channels() == [2048]
