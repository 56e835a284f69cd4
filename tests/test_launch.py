""" train/launch.py runs a timm-style script as __main__ with timm-cada's models registered. """
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'train' / 'launch.py'

# Stands for timm's train.py: reports what it sees, and imports a module from its own folder as timm's
# scripts may.
SCRIPT = '''
import json, os, sys
import timm
import sibling
if __name__ == '__main__':
    print(json.dumps(dict(
        name=__name__, argv=sys.argv[1:], script=sys.argv[0], sibling=sibling.VALUE,
        registered=timm.is_model('resnet50_cada_k7'), rank=os.environ.get('RANK'))))
'''


def _write_script(folder: Path) -> Path:
    (folder / 'sibling.py').write_text('VALUE = 42\n')
    script = folder / 'fake_train.py'
    script.write_text(SCRIPT)
    return script


def _reports(stdout: str):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]


def test_runs_script_as_main_with_models_and_args(tmp_path):
    script = _write_script(tmp_path)
    args = ['--model', 'resnet50_cada_k7', '--model-kwargs', 'mixer_args={"num_bases": 4}', 'DATA', '-b', '8']
    proc = subprocess.run([sys.executable, str(LAUNCH), str(script), *args], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    (report,) = _reports(proc.stdout)
    assert report == dict(name='__main__', argv=args, script=str(script), sibling=42, registered=True, rank=None)


def test_plain_python_does_not_register(tmp_path):
    """Without the launcher the script cannot see the models: what the launcher is for."""
    script = _write_script(tmp_path)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _reports(proc.stdout)[0]['registered'] is False


def test_works_under_torchrun(tmp_path):
    script = _write_script(tmp_path)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
         '--master_port', str(port), str(LAUNCH), str(script), '--epochs', '1'],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr
    reports = _reports(proc.stdout)
    assert sorted(r['rank'] for r in reports) == ['0', '1']
    assert all(r['registered'] and r['argv'] == ['--epochs', '1'] for r in reports)


def test_missing_script_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(LAUNCH), str(tmp_path / 'train.py'), '--model', 'x'],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'is not a file' in proc.stderr and 'train.py' in proc.stderr
