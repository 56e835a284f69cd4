""" A set of train/train.py runs, one per model (and seed), each in its own run folder: the train.py command,
telling a finished run, training the others (an interrupted run resumes from its last.pth.tar) and describing
a finished run (parameters, MACs, results). train/ablate.py and train/study.py run their sets with it. """
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import timm
from timm.data import resolve_data_config

from timm_cada.checkpoint import read_checkpoint
from timm_cada.profile import count_macs, count_params

from run_folder import LAST, RESULTS  # train/run_folder.py

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')


def split_argv(argv: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """(the script's own arguments, those after `--`, which go to every train.py run)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if '--' not in argv:
        return argv, []
    return argv[:argv.index('--')], argv[argv.index('--') + 1:]


class RunFailed(RuntimeError):
    """A train.py run that failed or stopped before the end of its schedule; its folder keeps its epochs."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One train.py run: `model` (with `seed`, when the set has seeds) into `run_dir`, with the train.py
    `options` of the set (the model, the run folder and --resume are added) and `extra` ones last."""
    model: str
    run_dir: str
    options: Tuple[str, ...] = ()
    extra: Tuple[str, ...] = ()
    seed: Optional[int] = None

    @property
    def label(self) -> str:
        return self.model if self.seed is None else f'{self.model} seed {self.seed}'


def train_command(job: Job, nproc_per_node: int = 1) -> List[str]:
    """The command that trains `job`, resuming its run folder's last.pth.tar when there is one."""
    cmd = [sys.executable, TRAIN]
    if nproc_per_node > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc_per_node), TRAIN]
    cmd += [*job.options, '--model', job.model]
    if job.seed is not None:
        cmd += ['--seed', str(job.seed)]
    cmd += ['--output', job.run_dir]
    last = os.path.join(job.run_dir, LAST)
    if os.path.isfile(last):
        cmd += ['--resume', last]
    return cmd + list(job.extra)


def run_results(run_dir: str) -> Optional[Dict[str, Any]]:
    """results.json of the run in `run_dir` (written at its last epoch, finished or stopped), or None."""
    path = os.path.join(run_dir, RESULTS)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished_results(run_dir: str, epochs: int = 0, tested: bool = False) -> Optional[Dict[str, Any]]:
    """results.json of the run in `run_dir` when it completed its schedule (and `epochs` epochs: a recipe may
    ask for more now) and, with `tested`, was evaluated on its test split; else None."""
    results = run_results(run_dir)
    if results is None or results['epochs'] < max(epochs, results.get('num_epochs', 0)) or (
            tested and 'test_top1' not in results):
        return None
    return results


def run_jobs(jobs: Iterable[Job], epochs: int = 0, tested: bool = False, max_runs: Optional[int] = None,
             nproc_per_node: int = 1, stopped: bool = False) -> Iterator[Tuple[Job, Dict[str, Any], Optional[float]]]:
    """(job, its results, the wall minutes of its training or None when reused) for each job, in order: a
    finished run is reused, any other trained (or resumed). Once `max_runs` were trained, the unfinished
    jobs left are skipped. A RunFailed error stops the set at a run that fails, or, unless `stopped`, that
    exits before the end of its schedule (train.py's --stop-after); with `stopped` such a run's results are
    taken as they stand (the next start resumes it). After each trained run it prints the set's progress: runs
    done of the total, and the time left at the mean minutes a run of this sitting."""
    found = [(job, finished_results(job.run_dir, epochs, tested)) for job in jobs]  # read once, before any run
    pending = sum(results is None for _, results in found)
    to_train = pending if max_runs is None else min(pending, max_runs)
    trained, minutes = 0, 0.0
    for job, results in found:
        wall = None
        if results is None:
            if max_runs is not None and trained >= max_runs:
                continue
            cmd = train_command(job, nproc_per_node)
            print(f'==> {job.label}: {" ".join(cmd)}', flush=True)
            tic = time.time()
            code = subprocess.run(cmd).returncode
            if code != 0:
                raise RunFailed(f'{job.label} failed (exit {code}, its log above); {job.run_dir} keeps its '
                                f'finished epochs, and the next start resumes it')
            wall, trained = (time.time() - tic) / 60, trained + 1
            results = run_results(job.run_dir) if stopped else finished_results(job.run_dir, epochs, tested)
            if results is None:
                raise RunFailed(f'{job.run_dir} did not finish its schedule (see its log above)')
            minutes += wall
            print(f'==> {len(found) - pending + trained} of {len(found)} runs done; {to_train - trained} more to train in '
                  f'this sitting, about {(to_train - trained) * minutes / trained:.0f} min at its '
                  f'{minutes / trained:.1f} min a run', flush=True)
        else:
            print(f'==> {job.label}: finished run in {job.run_dir} reused (delete it to train again)', flush=True)
        yield job, results, wall


@dataclasses.dataclass(frozen=True)
class Size:
    """A trained model's size and cost: parameters, and MACs at its run's input size (C, H, W)."""
    params: int
    macs: int
    input_size: Tuple[int, int, int]


def model_size(model: str, run_dir: str) -> Size:
    """The Size of the model of the finished run in `run_dir`, built with the run's model options."""
    ckpt = read_checkpoint(os.path.join(run_dir, LAST))
    net = timm.create_model(model, **ckpt['model_kwargs'])
    input_size = tuple(resolve_data_config(ckpt['args'], model=net)['input_size'])
    return Size(count_params(net), count_macs(net, input_size), input_size)
