""" train/train.py: a real short run on a tiny ImageFolder, resume, atomic checkpoints, DDP on CPU, bad input. """
import csv
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import timm
import timm_cada  # noqa: F401
from timm_cada.checkpoint import read_checkpoint, save_checkpoint
import runs  # train/runs.py (pytest's pythonpath)
from helpers import REPO, SUBPROCESS_ENV, TINY, TINY_MODEL, EvilPickle, load_script, make_image_folder

TRAIN = REPO / 'train' / 'train.py'
MODEL = TINY_MODEL
CHECKPOINT_KEYS = {'arch', 'model_kwargs', 'epoch', 'state_dict', 'optimizer', 'scheduler', 'top1', 'eval_metric',
                   'metric', 'args', 'version'}


trainer = load_script('train/train.py')


def train_cli(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TRAIN), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f'train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
    return proc


def read_summary(run_dir: Path):
    with open(run_dir / 'summary.csv') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def first_epoch(data, tmp_path_factory) -> Path:
    """A 3-epoch run stopped after its first epoch (as a job time limit would)."""
    out = tmp_path_factory.mktemp('run') / 'first'
    train_cli('--data-dir', data, '--output', out, '--epochs', 3, '--stop-after', 1, *TINY)
    return out


@pytest.fixture(scope='module')
def resumed(data, first_epoch, tmp_path_factory):
    """`first_epoch` continued with --resume; its scheduler's base lr halved first, to see that state restored."""
    out = tmp_path_factory.mktemp('run') / 'resumed'
    shutil.copytree(first_epoch, out)
    ckpt = read_checkpoint(out / 'last.pth.tar')
    ckpt['scheduler']['base_values'] = [v / 2 for v in ckpt['scheduler']['base_values']]
    torch.save(ckpt, out / 'last.pth.tar')
    proc = train_cli('--data-dir', data, '--output', out, '--epochs', 3, '--resume', out / 'last.pth.tar', *TINY)
    return out, proc


@pytest.mark.core  # also run against the oldest supported timm
def test_short_run_loss_falls_and_checkpoints_load(resumed):
    out, _ = resumed
    rows = read_summary(out)
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    for name in ('last.pth.tar', 'model_best.pth.tar'):
        ckpt = torch.load(out / name, map_location='cpu', weights_only=True)
        assert CHECKPOINT_KEYS <= set(ckpt) and ckpt['arch'] == MODEL and isinstance(ckpt['args'], dict)
        assert ckpt['model_kwargs'] == {'num_classes': 3, 'channels': [16, 32, 64, 128]}
        model = timm.create_model(ckpt['arch'], **ckpt['model_kwargs'])
        model.load_state_dict(ckpt['state_dict'])
    last = read_checkpoint(out / 'last.pth.tar')
    assert last['epoch'] == 2 and last['eval_metric'] == 'top1'
    assert last['metric'] == last['top1'] == pytest.approx(float(rows[-1]['eval_top1']))
    best = read_checkpoint(out / 'model_best.pth.tar')
    assert best['metric'] == pytest.approx(max(float(r['eval_top1']) for r in rows))
    results = json.loads((out / 'results.json').read_text())
    assert results['top1'] == pytest.approx(last['metric']) and 0 <= results['top5'] <= 100


def test_train_minutes_add_up_over_sittings(first_epoch, resumed):
    """The training time is kept in the checkpoint, so a resumed run reports the time of all its epochs."""
    first, last = (read_checkpoint(d / 'last.pth.tar')['train_seconds'] for d in (first_epoch, resumed[0]))
    assert 0 < first < last
    for folder, seconds in ((first_epoch, first), (resumed[0], last)):
        results = json.loads((folder / 'results.json').read_text())
        assert results['train_minutes'] == pytest.approx(seconds / 60, abs=1e-3)


def test_test_split_is_evaluated_once_with_the_final_weights(data, tmp_path):
    """--test-split: the final weights on that split, in results.json; it selects nothing. With the validation
    images as the test split, the test figures are the final validation figures."""
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    shutil.copytree(root / 'validation', root / 'test')
    out = tmp_path / 'run'
    proc = train_cli('--data-dir', root, '--output', out, '--epochs', 2, '--test-split', 'test', *TINY)
    results = json.loads((out / 'results.json').read_text())
    assert results['test_top1'] == pytest.approx(results['top1']) and results['test_loss'] == pytest.approx(results['loss'])
    assert proc.stderr.count('Eval (test)') == 1
    shutil.rmtree(root / 'test' / 'class2')
    proc = train_cli('--data-dir', root, '--output', tmp_path / 'other', '--test-split', 'test', *TINY, check=False)
    assert proc.returncode == 2 and "the 'test' split's classes differ" in proc.stderr and 'class2' in proc.stderr
    proc = train_cli('--data-dir', root, '--output', tmp_path / 'other', '--test-split', 'holdout', *TINY, check=False)
    assert proc.returncode == 2 and 'holdout' in proc.stderr


def test_model_kwargs_record_img_size_only_where_it_sizes_parameters():
    args = lambda model: trainer.parse_args(['--model', model, '--img-size', '64', '--model-kwargs', 'drop_rate=0.1'])
    assert trainer.model_kwargs(args('resnet26_local_k7'), 10) == {'num_classes': 10, 'img_size': 64, 'drop_rate': 0.1}
    assert trainer.model_kwargs(args('resnet26_position_k7'), 10)['img_size'] == 64
    assert trainer.model_kwargs(args('resnet26_cada_k7'), 10) == {'num_classes': 10, 'drop_rate': 0.1}
    rect = trainer.parse_args(['--model', 'resnet26_local_k7', '--input-size', '3', '48', '64'])
    assert trainer.model_kwargs(rect, 10)['img_size'] == [48, 64]  # (H, W), not W alone


def test_ablate_reuses_only_runs_that_finished_the_recipe(first_epoch, resumed):
    assert not runs.finished_results(first_epoch, 3)  # stopped by --stop-after 1: results.json, but 1 of 3 epochs
    assert runs.finished_results(resumed[0], 3)
    assert not runs.finished_results(resumed[0], 5)  # the recipe asks for more epochs now
    assert not runs.finished_results(first_epoch / 'missing', 3)


# A stand-in for train.py: notes when it ran and with how many threads, writes results.json (exit 3 for 'fail').
FAKE_TRAIN = """
import json, os, sys, time
folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
start = time.time()
print('training', folder)
if folder.endswith('fail'):
    sys.exit(3)
time.sleep(1)
with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(dict(epochs=2, num_epochs=2, top1=50.0, start=start, end=time.time(),
                   threads=os.environ.get('OMP_NUM_THREADS'),
                   env={k: v for k, v in os.environ.items() if k.startswith(('RUNS_TEST_', 'MALLOC_'))}), f)
"""


@pytest.fixture()
def fake_train(monkeypatch):
    monkeypatch.setattr(runs, 'train_command', lambda job, nproc: [sys.executable, '-c', FAKE_TRAIN, job.run_dir])


def test_run_jobs_reuses_finished_runs_and_prints_progress(tmp_path, fake_train, capsys):
    """A set of four runs, one already finished: three are trained, at most two in this sitting, and each
    trained run prints the set's progress."""
    jobs = [runs.Job('resnet26_dw_k3', str(tmp_path / f'run{i}')) for i in range(4)]
    (tmp_path / 'run1').mkdir()
    (tmp_path / 'run1' / runs.RESULTS).write_text(json.dumps(dict(epochs=2, num_epochs=2, top1=50.0)))
    done = [job.run_dir for job, _, _ in runs.run_jobs(jobs, epochs=2, max_runs=2)]
    assert done == [jobs[1].run_dir, jobs[0].run_dir, jobs[2].run_dir]  # run3 left for the next sitting
    out = capsys.readouterr().out
    assert '==> 2 of 4 runs done; 1 more to train in this sitting, about ' in out and '; 1 after it, about ' in out
    assert '==> 3 of 4 runs done; 0 more to train in this sitting, about 0 min at its pace' in out and out.count('; 1 after it') == 2
    assert out.count('reused (delete it to train again)') == 1 and 'training' in out  # output not redirected
    list(runs.run_jobs(jobs[3:], epochs=2, recorded=5))  # five runs of the set recorded elsewhere
    assert '==> 6 of 6 runs done; 0 more to train in this sitting, about 0 min at its pace' in capsys.readouterr().out


def test_run_jobs_environment(tmp_path, fake_train, monkeypatch):
    """The runs start with glibc's allocator keeping freed memory; env replaces the variables added, and a variable
    set in this process's environment wins."""
    for name in runs.KEEP_FREED_MEMORY:
        monkeypatch.delenv(name, raising=False)
    ((_, results, _),) = runs.run_jobs([runs.Job('m', str(tmp_path / 'a'))], epochs=2)
    assert results['env'] == runs.KEEP_FREED_MEMORY
    monkeypatch.setenv('RUNS_TEST_MINE', 'user')
    ((_, results, _),) = runs.run_jobs([runs.Job('m', str(tmp_path / 'b'))], epochs=2,
                                       env={'RUNS_TEST_MINE': 'set', 'RUNS_TEST_NEW': 'set'})
    assert results['env'] == {'RUNS_TEST_MINE': 'user', 'RUNS_TEST_NEW': 'set'}


def test_run_jobs_side_by_side(tmp_path, fake_train):
    """at_once=2: two runs at a time, each on its share of the cores and with its output in its run folder;
    a failed run starts no other, the one beside it finishes, and RunFailed names the failed run."""
    jobs = [runs.Job('resnet26_dw_k3', str(tmp_path / name)) for name in ('a', 'b', 'c', 'd')]
    finished = list(runs.run_jobs(jobs, epochs=2, at_once=2))
    assert sorted(job.run_dir for job, _, _ in finished) == [job.run_dir for job in jobs]
    results = {job.run_dir: r for job, r, _ in finished}
    a, b = results[jobs[0].run_dir], results[jobs[1].run_dir]
    assert a['start'] < b['end'] and b['start'] < a['end']  # a and b overlapped
    assert a['threads'] == str(max(1, runs.cores() // 2))
    assert (tmp_path / 'a' / runs.LOG).read_text().startswith('training')
    assert 1.5 < results[jobs[0].run_dir]['runs_at_once'] <= 2  # a and b shared the machine most of their lives
    # one run left to train: it runs as with at_once=1 (the environment's threads, output not redirected)
    (lone,) = [r for job, r, _ in runs.run_jobs([runs.Job('m', str(tmp_path / 'lone'))], epochs=2, at_once=2)]
    assert lone['threads'] == os.environ.get('OMP_NUM_THREADS') and lone['runs_at_once'] == 1.0
    assert not (tmp_path / 'lone' / runs.LOG).exists()

    jobs = [runs.Job('resnet26_dw_k3', str(tmp_path / name)) for name in ('fail', 'e', 'f')]
    got = []
    with pytest.raises(runs.RunFailed, match='resnet26_dw_k3 failed \\(exit 3, its log .*fail/train.log\\)'):
        for job, _, _ in runs.run_jobs(jobs, epochs=2, at_once=2):
            got.append(job.run_dir)
    assert got == [jobs[1].run_dir] and not (tmp_path / 'f').exists()


def test_killing_the_runner_stops_its_runs(tmp_path):
    """SIGTERM to a process running runs side by side stops them too (no orphan keeps writing a run folder that
    the next start resumes)."""
    script = tmp_path / 'runner.py'
    script.write_text(f"""
import sys
sys.path.insert(0, {str(REPO / 'train')!r})
import runs
runs.train_command = lambda job, nproc: [sys.executable, '-c', 'import os, time; open(os.path.join(' + repr(job.run_dir) + ', "pid"), "w").write(str(os.getpid())); time.sleep(60)']
jobs = [runs.Job('m', {str(tmp_path)!r} + '/' + name) for name in ('a', 'b')]
for _ in runs.run_jobs(jobs, at_once=2):
    pass
""")
    proc = subprocess.Popen([sys.executable, str(script)], env=SUBPROCESS_ENV)
    pids = [tmp_path / name / 'pid' for name in ('a', 'b')]
    deadline = time.time() + 300  # the runner imports torch and timm: slow on a busy machine
    while not all(p.is_file() and p.read_text() for p in pids):
        assert time.time() < deadline and proc.poll() is None, 'the runs did not start'
        time.sleep(0.2)
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    for p in pids:
        pid = int(p.read_text())
        with pytest.raises(ProcessLookupError):  # gone (reaped by the runner), not orphaned
            os.kill(pid, 0)
    for name in ('a', 'b'):  # the stopped sitting is recorded, to count when the run resumes
        wall, shared = runs.sittings_time(str(tmp_path / name))
        assert 0 < wall < 1 and 1.5 < shared <= 2


def test_a_resumed_runs_machine_time_counts_each_sitting_at_its_share(tmp_path, fake_train):
    """A run's sittings add up to its wall minutes, and its runs side by side are the mean that makes wall over
    it the machine minutes: 3 min two at once and 1 alone took 2.5 machine-minutes (4 / 1.6, not 4 / 1.75).
    A run that ends alone after 3 minutes two at once, and a finished run reused later, carry them."""
    run_dir = str(tmp_path / 'run')
    assert runs.sittings_time(run_dir) is None
    runs.record_sitting(run_dir, 3.0, 2.0)
    runs.record_sitting(run_dir, 1.0, 1.0)
    with open(os.path.join(run_dir, runs.SITTINGS), 'a') as f:
        f.write('0.5')  # half written by a sitting killed outright: not counted
    assert runs.sittings_time(run_dir) == pytest.approx((4.0, 1.6))

    run_dir = str(tmp_path / 'resumed')
    runs.record_sitting(run_dir, 3.0, 2.0)
    ((_, results, wall),) = runs.run_jobs([runs.Job('m', run_dir)], epochs=2)
    alone = wall - 3.0
    assert 0 < alone < 1
    assert results['runs_at_once'] == pytest.approx(wall / (1.5 + alone), abs=0.006)  # ~1.99, to 2 decimals
    ((_, again, wall_again),) = runs.run_jobs([runs.Job('m', run_dir)], epochs=2)  # finished: reused, not trained
    assert wall_again == pytest.approx(wall, abs=1e-3) and again['runs_at_once'] == results['runs_at_once']
    list(runs.run_jobs([runs.Job('m', str(tmp_path / 'lone'))], epochs=2))
    os.remove(os.path.join(tmp_path, 'lone', runs.SITTINGS))
    ((_, _, none),) = runs.run_jobs([runs.Job('m', str(tmp_path / 'lone'))], epochs=2)
    assert none is None  # reused, its sittings unknown


def test_make_digits_regenerates_when_parameters_change(tmp_path):
    make_digits = load_script('train/make_digits.py')
    root = tmp_path / 'digits'
    (root / 'train' / '0').mkdir(parents=True)
    (root / 'train' / '0' / '0000.png').write_bytes(b'\x89PNG\r\n')  # left truncated by a killed run
    files = lambda split: {p.name for p in (root / split).rglob('*.png')}
    assert make_digits.write_digits(str(root), size=8, val_fraction=0.2) == {'train': 1437, 'validation': 360}
    assert Image.open(next((root / 'train').rglob('*.png'))).size == (8, 8)
    Image.open(root / 'train' / '0' / '0000.png').load()
    stamp = (root / 'digits.json').stat().st_mtime_ns
    make_digits.write_digits(str(root), size=8, val_fraction=0.2)  # same parameters: kept as is
    assert (root / 'digits.json').stat().st_mtime_ns == stamp
    counts = make_digits.write_digits(str(root), size=12, val_fraction=0.5)
    train, val = files('train'), files('validation')
    assert (len(train), len(val)) == (counts['train'], counts['validation']) and not train & val
    assert {Image.open(p).size for p in root.rglob('*.png')} == {(12, 12)}
    assert not list(root.rglob('*.tmp'))


def test_resume_continues_with_optimizer_and_scheduler_state(first_epoch, resumed):
    out, proc = resumed
    first = read_checkpoint(first_epoch / 'last.pth.tar')
    assert first['epoch'] == 0 and len(read_summary(first_epoch)) == 1
    assert 'epochs 1..2' in proc.stderr  # the resumed run starts at the second epoch
    # AdamW counts its steps: restored, the count goes on from the first run's.
    steps_per_epoch = 24 // 8
    step = lambda ckpt: int(next(iter(ckpt['optimizer']['state'].values()))['step'])
    assert step(first) == steps_per_epoch
    assert step(read_checkpoint(out / 'last.pth.tar')) == 3 * steps_per_epoch
    # Cosine over 3 epochs, no warmup: epoch t trains at lr = base * (1 + cos(pi t / 3)) / 2, and summary.csv
    # records the lr each epoch trained at. The base lr was halved in the checkpoint, so only a restored
    # scheduler gives half the recipe's value.
    rows = read_summary(out)
    assert float(rows[0]['lr']) == pytest.approx(2e-3, rel=1e-6)
    assert float(rows[1]['lr']) == pytest.approx(0.5 * 2e-3 * (1 + np.cos(np.pi / 3)) / 2, rel=1e-6)


def test_resume_with_longer_schedule(data, first_epoch, tmp_path, caplog):
    """More --epochs than the checkpoint's run: the schedule is rebuilt for the new length, training goes on."""
    caplog.set_level(logging.INFO)
    out = tmp_path / 'longer'
    shutil.copytree(first_epoch, out)
    _run_in_process(['--data-dir', data, '--output', out, '--epochs', 5, '--stop-after', 1,
                     '--resume', out / 'last.pth.tar', *TINY])
    assert '--epochs changed from 3 to 5' in caplog.text
    rows = read_summary(out)
    assert [int(r['epoch']) for r in rows] == [0, 1]
    # Cosine over 5 epochs: epoch 1 trains at lr = base * (1 + cos(pi / 5)) / 2.
    assert float(rows[1]['lr']) == pytest.approx(2e-3 * (1 + np.cos(np.pi / 5)) / 2, rel=1e-6)


class _Interrupt:
    """Stands for a kill during torch.save: pickling it fails after the tensors before it were written."""

    def __reduce__(self):
        raise KeyboardInterrupt('killed while writing')


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
    path = tmp_path / 'last.pth.tar'
    save_checkpoint({'epoch': 0, 'w': torch.ones(3)}, path)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'epoch': 1, 'w': torch.zeros(1 << 20), 'z': _Interrupt()}, path)
    ckpt = read_checkpoint(path)
    assert ckpt['epoch'] == 0 and torch.equal(ckpt['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['last.pth.tar']


def test_killed_checkpoint_write_keeps_previous(tmp_path):
    """SIGKILL while the new checkpoint is being written (its pickling stalls): the previous file still loads."""
    path = tmp_path / 'last.pth.tar'
    save_checkpoint({'epoch': 0}, path)
    script = tmp_path / 'writer.py'
    script.write_text(
        'import sys, time, torch\n'
        'from timm_cada.checkpoint import save_checkpoint\n'
        'class Slow:\n'
        '    def __reduce__(self):\n'
        '        time.sleep(60)\n'
        '        return (int, (1,))\n'
        'save_checkpoint({"epoch": 1, "w": torch.zeros(1 << 20), "z": Slow()}, sys.argv[1])\n')
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    tmp = Path(f'{path}.tmp')
    deadline = time.time() + 60
    while not tmp.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp.exists()  # killed mid-write
    assert read_checkpoint(path)['epoch'] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_agree(data, tmp_path):
    out = tmp_path / 'ddp'
    wrapper = tmp_path / 'ddp_run.py'
    wrapper.write_text(
        'import importlib.util, os, sys, torch\n'
        f'spec = importlib.util.spec_from_file_location("trainer", {str(TRAIN)!r})\n'
        'trainer = importlib.util.module_from_spec(spec); spec.loader.exec_module(trainer)\n'
        'trainer.utils.setup_default_logging()\n'
        'model, _ = trainer.run(trainer.parse_args(sys.argv[1:]))\n'
        'torch.save(model.state_dict(), os.path.join(sys.argv[sys.argv.index("--output") + 1], '
        'f"rank{os.environ[\'RANK\']}.pt"))\n')
    # train.py imports its neighbours in train/, which `python train/train.py` puts on the path
    pythonpath = os.pathsep.join(filter(None, [str(REPO / 'train'), os.environ.get('PYTHONPATH')]))
    env = dict(SUBPROCESS_ENV, GLOO_SOCKET_IFNAME='lo', PYTHONPATH=pythonpath)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
         '--master_port', str(_free_port()), str(wrapper), '--data-dir', str(data), '--output', str(out),
         '--epochs', '1', *TINY],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'Process 1 of 2 on cpu (backend gloo)' in proc.stderr
    states = [torch.load(out / f'rank{r}.pt', weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, msg=f'ranks disagree on {k}')
    ckpt = read_checkpoint(out / 'last.pth.tar')
    assert ckpt['epoch'] == 0 and ckpt['args']['world_size'] == 2
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])  # unwrapped from DDP


def _run_in_process(argv):
    return trainer.run(trainer.parse_args([str(a) for a in argv]))


def test_warm_start_flag_loads_source_weights(data, tmp_path):
    src = timm.create_model(MODEL, num_classes=3, channels=(16, 32, 64, 128)).state_dict()
    torch.save(src, tmp_path / 'src.pth')
    model, _ = _run_in_process(['--data-dir', data, '--output', tmp_path / 'out', '--epochs', 1, '--stop-after', 0,
                                '--warm-start', tmp_path / 'src.pth', *TINY])
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k]), k


def test_ema_bf16_channels_last_grad_checkpointing_mixup_bce(data, tmp_path):
    out = tmp_path / 'features'
    _run_in_process(['--data-dir', data, '--output', out, '--epochs', 1, *TINY, '--model-ema',
                     '--model-ema-decay', '0.9', '--amp', '--amp-dtype', 'bfloat16', '--channels-last',
                     '--grad-checkpointing', '--mixup', '0.2', '--cutmix', '1.0', '--bce-loss'])
    ckpt = read_checkpoint(out / 'last.pth.tar')
    assert ckpt['state_dict_ema'].keys() == ckpt['state_dict'].keys() and 'scaler' not in ckpt
    assert not torch.equal(ckpt['state_dict_ema']['fc.weight'], ckpt['state_dict']['fc.weight'])
    assert 'ema_top1' in json.loads((out / 'results.json').read_text())
    summary = read_summary(out)[0]
    # With EMA, model_best is selected by the EMA's metric, and both top-1s are recorded.
    assert ckpt['eval_metric'] == 'ema_top1' and ckpt['metric'] == ckpt['ema_top1']
    assert ckpt['ema_top1'] == pytest.approx(float(summary['eval_ema_top1']))
    assert ckpt['top1'] == pytest.approx(float(summary['eval_top1']))


def test_fp16_loss_scaler_saved_and_restored(data, tmp_path):
    out = tmp_path / 'fp16'
    argv = ['--data-dir', data, '--output', out, '--epochs', 2, *TINY, '--amp', '--amp-dtype', 'float16']
    _run_in_process([*argv, '--stop-after', 1])
    ckpt = read_checkpoint(out / 'last.pth.tar')
    assert ckpt['scaler']['scale'] > 0
    # A scale the run would not reach by itself (it starts at 2 ** 16 and grows only every 2000 steps):
    # a restored scaler keeps it or halves it, a fresh one would start over at 2 ** 16.
    ckpt['scaler']['scale'] = 1024.
    torch.save(ckpt, out / 'last.pth.tar')
    _run_in_process([*argv, '--resume', out / 'last.pth.tar'])
    ckpt = read_checkpoint(out / 'last.pth.tar')
    assert ckpt['epoch'] == 1 and ckpt['scaler']['scale'] <= 1024.


def test_torchcompile(data, tmp_path):
    """torch.compile through dynamo ('eager' backend: no C++ toolchain needed); the checkpoint is unwrapped."""
    out = tmp_path / 'compiled'
    model, _ = _run_in_process(['--data-dir', data, '--output', out, '--epochs', 1, *TINY, '--torchcompile', 'eager'])
    assert set(read_checkpoint(out / 'last.pth.tar')['state_dict']) == set(model.state_dict())
    assert not any(k.startswith('_orig_mod.') for k in model.state_dict())


def test_eval_metric_loss_selects_best_across_resume(data, tmp_path):
    """--eval-metric loss: checkpoints record the loss as their metric, and a resumed run compares losses."""
    out = tmp_path / 'by_loss'
    argv = ['--data-dir', data, '--output', out, '--epochs', 2, *TINY, '--eval-metric', 'loss']
    _run_in_process([*argv, '--stop-after', 1])
    best = read_checkpoint(out / 'model_best.pth.tar')
    assert best['eval_metric'] == 'loss' and best['metric'] == pytest.approx(float(read_summary(out)[0]['eval_loss']))
    assert best['top1'] == pytest.approx(float(read_summary(out)[0]['eval_top1']))
    # The checkpoint is the run's record of its best epoch: a best loss no later epoch beats keeps epoch 0.
    last = read_checkpoint(out / 'last.pth.tar')
    assert last['best'] == {'epoch': 0, 'metric': best['metric']}
    last['best']['metric'] = 0.
    torch.save(last, out / 'last.pth.tar')
    _run_in_process([*argv, '--resume', out / 'last.pth.tar'])
    last = read_checkpoint(out / 'last.pth.tar')
    assert last['epoch'] == 1 and last['best'] == {'epoch': 0, 'metric': 0.}
    assert read_checkpoint(out / 'model_best.pth.tar')['epoch'] == 0


def test_resume_skips_warm_start_and_initial_checkpoint(first_epoch, data, tmp_path, monkeypatch):
    out = tmp_path / 'resume'
    shutil.copytree(first_epoch, out)
    monkeypatch.setattr(trainer, 'warm_start', lambda *a: pytest.fail('warm start applied on resume'))
    model, _ = _run_in_process(['--data-dir', data, '--output', out, '--epochs', 3, '--stop-after', 0, *TINY,
                                '--resume', out / 'last.pth.tar', '--warm-start', 'resnet50.a1_in1k',
                                '--initial-checkpoint', tmp_path / 'missing.pth'])
    for k, v in read_checkpoint(out / 'last.pth.tar')['state_dict'].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_initial_checkpoint_loads_weights(data, tmp_path):
    src = timm.create_model(MODEL, num_classes=3, channels=(16, 32, 64, 128)).state_dict()
    torch.save({'state_dict': src, 'epoch': 4}, tmp_path / 'init.pth')
    model, _ = _run_in_process(['--data-dir', data, '--output', tmp_path / 'out', '--epochs', 1, '--stop-after', 0,
                                '--initial-checkpoint', tmp_path / 'init.pth', *TINY])
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k]), k


# ---- bad input: a clear error naming the argument, and nothing written or lost ----

def _expect_input_error(argv, *fragments):
    with pytest.raises(trainer.InputError) as e:
        _run_in_process(argv)
    for f in fragments:
        assert f in str(e.value)
    return str(e.value)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / 'nope'
    _expect_input_error(['--data-dir', missing, '--output', tmp_path / 'out', *TINY], '--data-dir', str(missing))
    assert not (tmp_path / 'out').exists()


def test_empty_data_dir(tmp_path):
    (tmp_path / 'data' / 'train' / 'cat').mkdir(parents=True)
    _expect_input_error(['--data-dir', tmp_path / 'data', '--output', tmp_path / 'out', *TINY],
                        '--data-dir', 'no images', 'train')
    assert not (tmp_path / 'out').exists()


def test_missing_split_folder(data, tmp_path):
    shutil.copytree(data / 'train', tmp_path / 'data' / 'train')
    _expect_input_error(['--data-dir', tmp_path / 'data', '--output', tmp_path / 'out', *TINY],
                        '--data-dir', "no folder for split 'validation'", 'val')
    assert not (tmp_path / 'out').exists()


def test_unknown_model_suggests_close_names(data, tmp_path):
    argv = ['--data-dir', data, '--output', tmp_path / 'out', *TINY, '--model', 'resnet50_cada_k8']
    msg = _expect_input_error(argv, '--model', "'resnet50_cada_k8'", 'resnet50_cada_k7')
    assert 'resnet50_cada_k9' in msg
    assert not (tmp_path / 'out').exists()


def test_unknown_recipe_key(tmp_path, capsys):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'epochs': 3, 'warmup_epoch': 1}))
    with pytest.raises(SystemExit) as e:
        trainer.parse_args(['-c', str(recipe)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'warmup_epoch'" in err and 'warmup_epochs' in err and str(recipe) in err


def test_corrupt_image_named_and_checkpoint_kept(data, first_epoch, tmp_path):
    bad_data = tmp_path / 'data'
    shutil.copytree(data, bad_data)
    bad = bad_data / 'train' / 'class1' / '3.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    out = tmp_path / 'run'
    shutil.copytree(first_epoch, out)
    before = (out / 'last.pth.tar').read_bytes()
    proc = train_cli('--data-dir', bad_data, '--output', out, '--epochs', 3, '--resume', out / 'last.pth.tar',
                     *TINY, '-j', '1', check=False)
    assert proc.returncode == 1
    assert f'Cannot read image file {bad}' in proc.stderr.splitlines()[-1]
    assert (out / 'last.pth.tar').read_bytes() == before


def test_pretrained_without_published_weights(data, tmp_path):
    _expect_input_error(['--data-dir', data, '--output', tmp_path / 'out', *TINY, '--pretrained'],
                        '--pretrained', 'No pretrained weights are published')
    assert not (tmp_path / 'out').exists()


def test_initial_checkpoint_is_read_with_weights_only(data, tmp_path):
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'fc.bias': torch.zeros(3)}, 'args': EvilPickle(tmp_path / 'pwned')}, evil)
    _expect_input_error(['--data-dir', data, '--output', tmp_path / 'out', *TINY, '--initial-checkpoint', evil],
                        '--initial-checkpoint', 'weights_only=True')
    assert not (tmp_path / 'pwned').exists() and not (tmp_path / 'out').exists()
