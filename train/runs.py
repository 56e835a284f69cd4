""" A set of train/train.py runs, one per model (and seed), each in its own run folder: the train.py command,
telling a finished run, training the others (an interrupted run resumes from its last.pth.tar) and describing
a finished run (parameters, MACs, results). train/ablate.py and train/study.py run their sets with it. """
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import timm
from timm.data import resolve_data_config

from timm_cada.checkpoint import read_checkpoint
from timm_cada.profile import count_macs, count_params

from run_folder import LAST, RESULTS  # train/run_folder.py

LOG = 'train.log'  # a run's output when runs train side by side
# A run's sittings, one line each (wall minutes, mean runs under way), for the machine time of a resumed run
SITTINGS = 'sittings.csv'
# The environment the runs start in: glibc's allocator keeps freed memory for the next step rather than mapping
# fresh pages for every large tensor (each page then faulted in again): 1.2-1.4x the images/s of the study's
# models on the 2-core machine; speed only, the numbers are the same (benchmarks/RESULTS.md)
KEEP_FREED_MEMORY = {'MALLOC_MMAP_THRESHOLD_': str(1 << 30), 'MALLOC_TRIM_THRESHOLD_': str(1 << 30)}

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


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _next_exit(running: Iterable[subprocess.Popen]) -> subprocess.Popen:
    """The first of the `running` processes to exit (waited for)."""
    while True:
        for proc in running:
            if proc.poll() is not None:
                return proc
        time.sleep(0.2)


def record_sitting(run_dir: str, wall_minutes: float, runs_at_once: float) -> None:
    """Add a sitting of the run in `run_dir` to its SITTINGS: its wall minutes and the mean runs under way."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, SITTINGS), 'a') as f:
        f.write(f'{wall_minutes:.4f},{runs_at_once:.4f}\n')


def sittings_time(run_dir: str) -> Optional[Tuple[float, float]]:
    """(wall minutes over the recorded sittings of the run in `run_dir`, the mean runs under way, weighted so that
    the first over the second is the machine minutes the run took: the sum of each sitting's wall minutes over
    its runs under way), or None before any. A sitting ended by SIGKILL is not recorded (nor a line it left
    half written): then the run's training minutes usually exceed these wall minutes."""
    path = os.path.join(run_dir, SITTINGS)
    if not os.path.exists(path):
        return None
    sittings = []
    with open(path) as f:
        for line in f:
            try:
                wall, shared = map(float, line.split(','))
            except ValueError:
                continue
            sittings.append((wall, shared))
    wall = sum(w for w, _ in sittings)
    machine = sum(w / k for w, k in sittings)
    return (wall, wall / machine) if machine > 0 else None


@dataclasses.dataclass
class _Running:
    """A train.py process under way: its job, when it started, and the integral of the number of runs under way
    over its life (seconds x runs), for the mean number of runs that shared the machine with it."""
    job: Job
    start: float
    shared: float = 0.0

    def record_sitting(self) -> None:
        """Add this sitting, up to now, to the run folder's SITTINGS."""
        wall = time.time() - self.start
        record_sitting(self.job.run_dir, wall / 60, self.shared / wall if wall > 0 else 1.0)


def run_jobs(jobs: Iterable[Job], epochs: int = 0, tested: bool = False, max_runs: Optional[int] = None,
             nproc_per_node: int = 1, stopped: bool = False, at_once: int = 1,
             env: Mapping[str, str] = KEEP_FREED_MEMORY, recorded: int = 0,
             ) -> Iterator[Tuple[Job, Dict[str, Any], Optional[float]]]:
    """(job, its results, the wall minutes of its training, or None for a run reused without recorded sittings)
    for each job: the finished runs first (reused), then each trained (or resumed) run as it finishes. Once
    `max_runs` were started, the unfinished jobs left are skipped. With `at_once` > 1, that many runs train side by side, each on its share
    of the cores (OMP_NUM_THREADS) with its output in RUN_DIR/train.log (small models train faster so than one
    run on every core); a trained run's results carry 'runs_at_once', the mean number of runs under way
    during its life, and its wall minutes are those of all its recorded sittings (SITTINGS: a resumed run's
    earlier ones too, so that wall minutes over runs_at_once are the machine minutes it took). `env` adds
    environment variables for the runs (default KEEP_FREED_MEMORY), where this process does not set them. A
    run that fails, or, unless `stopped`, exits before the end of its schedule (train.py's --stop-after), starts
    no further run and raises RunFailed once the runs under way finished; with `stopped` such a run's results
    are taken as they stand (the next start resumes it). After each trained run it prints
    the set's progress: runs done of the total (with `recorded` runs of the set done before and not passed as jobs,
    such as the rows of a results table), and the time left at this sitting's pace. Killed (SIGTERM), it
    stops its runs, which resume at the next start."""
    found = [(job, finished_results(job.run_dir, epochs, tested)) for job in jobs]  # read once, before any run
    queue = [job for job, results in found if results is None][:max_runs]
    for job, results in found:
        if results is not None:
            print(f'==> {job.label}: finished run in {job.run_dir} reused (delete it to train again)', flush=True)
            timed = sittings_time(job.run_dir)  # trained here before: the caller may lack its row
            yield (job, results, None) if timed is None else (job, dict(results, runs_at_once=round(timed[1], 2)),
                                                                timed[0])
    at_once = max(1, min(at_once, len(queue)))
    done = len(found) - sum(results is None for _, results in found)
    env = {**env, **os.environ}
    if at_once > 1:
        env['OMP_NUM_THREADS'] = str(max(1, cores() // at_once))
    running: Dict[subprocess.Popen, _Running] = {}
    failures: List[str] = []
    start, trained, last = time.time(), 0, time.time()

    def account() -> None:
        """Add the time since the last change in the runs under way to each one's shared integral."""
        nonlocal last
        now = time.time()
        for run in running.values():
            run.shared += (now - last) * len(running)
        last = now

    def fill() -> None:
        """Start queued runs while a slot is free (and none failed)."""
        while queue and not failures and len(running) < at_once:
            job = queue.pop(0)
            cmd, log = train_command(job, nproc_per_node), None
            if at_once > 1:
                os.makedirs(job.run_dir, exist_ok=True)
                log = open(os.path.join(job.run_dir, LOG), 'a')
            print(f'==> {job.label}: {" ".join(cmd)}' + (f'  (output: {log.name})' if log else ''), flush=True)
            with log or contextlib.nullcontext():
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None, env=env)
            account()
            running[proc] = _Running(job, time.time())

    if threading.current_thread() is threading.main_thread():  # a kill stops the runs too (see finally)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        fill()
        while running:
            proc = _next_exit(running)
            account()
            run = running.pop(proc)
            job = run.job
            run.record_sitting()
            where = f'{os.path.join(job.run_dir, LOG)}' if at_once > 1 else 'above'
            results = None
            if proc.returncode != 0:
                failures.append(f'{job.label} failed (exit {proc.returncode}, its log {where}); {job.run_dir} '
                                f'keeps its finished epochs, and the next start resumes it')
            else:
                results = run_results(job.run_dir) if stopped else finished_results(job.run_dir, epochs, tested)
                if results is None:
                    failures.append(f'{job.run_dir} did not finish its schedule (its log {where})')
            fill()  # before the caller's bookkeeping, so no slot idles during it
            if results is None:
                continue
            done, trained = done + 1, trained + 1
            left, pace = len(queue) + len(running), (time.time() - start) / 60 / trained
            later = len(found) - done - left  # beyond max_runs
            print(f'==> {recorded + done} of {recorded + len(found)} runs done; {left} more to train in this sitting, '
                  f'about {left * pace:.0f} min at its pace (a run finished every {pace:.1f} min)'
                  + (f'; {later} after it, about {later * pace:.0f} min' if later else ''), flush=True)
            wall_minutes, shared = sittings_time(job.run_dir)  # recorded above
            yield job, dict(results, runs_at_once=round(shared, 2)), wall_minutes
    finally:
        account()
        for proc, run in running.items():  # only when stopped early: each resumes from its last epoch next time
            proc.terminate()
            run.record_sitting()
        for proc in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if failures:
        raise RunFailed('; '.join(failures))


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
