#!/usr/bin/env python3
""" The paper's ablation at CPU scale: every row of the study on Fashion-MNIST, with seeds, error bars and a
verdict on each of the abstract's six findings.

    python train/study.py                                   # the whole study into results/fashion_mnist/
    python train/study.py --models resnet26_cada_k7 resnet26_dw_k7 --seeds 0 1 2 --output DIR
    python train/study.py --quick                           # two models, one seed, a tiny split: a minute or two

Each (model, seed) trains with train/train.py and train/configs/fashion_mnist.yaml into WORK/PROTOCOL/MODEL-sSEED
and is evaluated once on the official test set. A run is reused when OUTPUT/runs.csv holds its row under the same
protocol (recipe, data and options: a hash), or when its run folder finished; an interrupted run resumes from its
last.pth.tar. After every run OUTPUT/runs.csv, OUTPUT/README.md (protocol, mean and standard deviation per model,
the findings and their verdicts) and one PNG per ablation axis are written again, so the study can be stopped
anywhere and completed over several sittings. The data step is train/fashion_mnist.py (Debian's package).
"""
import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from timm_cada.compat import require_timm
from timm_cada.load import SAVE_FOR_HF_TIMM

import fashion_mnist  # train/fashion_mnist.py, the data step
from runs import LOG, Job, RunFailed, cores, finished_results, model_size, run_jobs, split_argv  # train/runs.py
from run_folder import LAST  # train/run_folder.py
from study_findings import (  # train/study_findings.py
    BIAS_IMAGES_PER_CLASS, BUDGET_HOURS, CONVERGED_DATA, CONVERGED_OPTIONS, MODELS, ONE_EPOCH, PILOT_MODELS,
    PILOT_EPOCHS, PILOT_SEEDS, QUICK, QUICK_DATA, QUICK_MODELS, QUICK_SEEDS, SEEDS, DataSpec, Protocol, Stats,
    complete, converged, converged_epochs, converged_hours, pilot_stats, seed_round, settles)
from study_report import (  # train/study_report.py
    REPO, Budget, machine_hours, pilot_speed, update_quotes, verdict_quote, write_report)

RECIPE = os.path.join(REPO, 'train', 'configs', 'fashion_mnist.yaml')
RESULTS = os.path.join(REPO, 'results', 'fashion_mnist')

COLUMNS = ('model', 'seed', 'top1', 'top5', 'val_top1', 'epochs', 'train_images', 'params_M', 'MMACs',
           'train_minutes', 'wall_minutes', 'runs_at_once', 'spatial_variation', 'context_sensitivity', 'machine', 'protocol')
ROW_KEY = ('model', 'seed', 'protocol')  # a run's identity in runs.csv
# train.py options that make a run faster without changing it (not part of the protocol)
FAST = ('--preload-images',)
WEIGHTS = 'weights'  # OUTPUT/weights/MODEL: the seed-0 model of a protocol that ships weights
# train.py options the study sets for each run itself: not accepted after `--`
STUDY_SETS = ('-c', '--config', '--model', '--seed', '--data-dir', '--data', '--output', '--resume', '--test-split')


def protocol_id(recipe: str, data: DataSpec, extra: Sequence[str]) -> str:
    """A short hash of what decides a run's result besides model and seed: the recipe's text, the data, the
    extra train.py options."""
    with open(recipe, 'rb') as f:
        text = f.read().decode()
    blob = json.dumps(dict(recipe=text, data=dataclasses.asdict(data), extra=list(extra)), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_rows(path: str) -> List[Dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def write_rows(path: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str] = COLUMNS,
               order: Sequence[str] = ('model', 'seed')) -> None:
    """A CSV of `rows` with `columns`, sorted by the `order` columns (models in the study's order, numbers as
    numbers), replaced atomically."""
    from timm_cada.checkpoint import atomic_file
    rank = {m: i for i, m in enumerate(MODELS)}

    def key(r):
        return tuple((rank.get(str(r[c]), len(rank)), str(r[c])) if c == 'model' else int(r[c]) for c in order)

    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{c: r.get(c, '') for c in columns} for r in sorted(rows, key=key)])
    with atomic_file(path) as f:
        f.write(text.getvalue().encode())


def default_data_dir(protocol: str) -> str:
    """The ImageFolder a budget's runs train on by default (each budget its own split of the data)."""
    return os.path.join('.cache', f'fashion_mnist-{protocol}')


def write_data(data: DataSpec, data_dir: str, source: Optional[str], prog: str) -> Dict[str, int]:
    """The ImageFolder of `data` in `data_dir` (train/fashion_mnist.py; reused when complete); its image count per
    split. Missing or damaged data stops `prog` with the reason."""
    try:
        return fashion_mnist.write_fashion_mnist(data_dir, source, data.val_per_class, data.seed,
                                                 train_per_class=data.train_per_class)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'{prog}: error: {e}')


def protocol_hash(protocol: Protocol, extra: Sequence[str] = ()) -> str:
    """The hash that names `protocol`'s runs (with `extra` train.py options after its own)."""
    return protocol_id(RECIPE, protocol.data, (*protocol.options, *extra))


def pilot_protocol_id(data: DataSpec = CONVERGED_DATA) -> str:
    """The hash of the converged protocol's pilot runs (train/pilot.py): the recipe, the data and the converged
    options; each run adds its --epochs."""
    return protocol_hash(Protocol('pilot', data, CONVERGED_OPTIONS))


@dataclasses.dataclass(frozen=True)
class PilotChoice:
    """What the pilot's design rows (`rows`: its models and seeds) say: `epochs` (None while undecided), the
    stats per (model, epochs), and the pilot's measured (images/s, at epochs) by which the budget is judged (None
    before any timed run: every schedule then fits)."""
    epochs: Optional[int]
    rows: List[Mapping[str, object]]
    stats: Dict[Tuple[str, int], Stats]
    speed: Optional[Tuple[float, int]]

    def hours(self, epochs: int) -> Optional[float]:
        """The machine hours of the converged protocol at `epochs` epochs, at the pilot's speed."""
        return converged_hours(epochs, int(self.rows[0]['train_images']), self.speed[0]) if self.speed else None

    def fits(self, epochs: int) -> bool:
        hours = self.hours(epochs)
        return hours is None or hours <= BUDGET_HOURS


def choose_schedule(rows: Sequence[Mapping[str, object]]) -> PilotChoice:
    """The converged schedule by the pilot's rule from the pilot's rows (their design only: the pilot models and
    seeds), with the budget judged at the pilot's measured throughput."""
    rows = [r for r in rows if r['model'] in PILOT_MODELS and int(r['seed']) in PILOT_SEEDS]
    undecided = PilotChoice(None, rows, pilot_stats(rows), pilot_speed(rows))
    return dataclasses.replace(undecided, epochs=converged_epochs(undecided.stats, undecided.fits))


def pilot_decision(folder: Optional[str] = None) -> Tuple[Optional[int], str]:
    """(the converged schedule in epochs that the pilot's runs in FOLDER/pilot.csv (default: the study's results)
    chose, None while undecided; the evidence in words: what doubling that schedule, or reaching it, moved each
    pilot model's validation top-1)."""
    rows = [r for r in read_rows(os.path.join(folder or RESULTS, 'pilot.csv')) if r['protocol'] == pilot_protocol_id()]
    choice = choose_schedule(rows)
    epochs, stats = choice.epochs, choice.stats
    if epochs is None:
        if not choice.fits(PILOT_EPOCHS[0]):
            return None, (f'not even {PILOT_EPOCHS[0]} epoch(s) fit the {BUDGET_HOURS} h budget at the pilot\'s '
                          f'{choice.speed[0]:.0f} images/s')
        return None, f'{len(choice.rows)} pilot runs done, no schedule chosen yet'

    def moves(a: int, b: int) -> str:
        return ', '.join(f'{m} {stats[m, b].mean - stats[m, a].mean:+.2f}' for m in PILOT_MODELS)

    where = 'the pilot ([pilot.md](pilot.md), validation split)'
    if settles(stats, epochs):
        return epochs, (f'Convergence: {where} chose {epochs} epochs; doubling them moved the mean validation top-1 '
                        f'by {moves(epochs, 2 * epochs)} points.')
    # not settled: its doubling where the pilot has it, else the step to it from the schedule before
    i = PILOT_EPOCHS.index(epochs)
    a, b = (epochs, 2 * epochs) if complete(stats, 2 * epochs) else (PILOT_EPOCHS[max(i - 1, 0)], epochs)
    evidence = (f': going from {a} to {b} epochs still moved the mean validation top-1 by {moves(a, b)} points'
                if a != b else '')
    limit = (f'the longest schedule within the {BUDGET_HOURS} h budget' if choice.speed else
             'the pilot\'s longest schedule (no timed run to judge the budget by)')
    return epochs, f'Convergence: {where} chose {epochs} epochs, {limit}, NOT settled{evidence}.'


def job(model: str, seed: int, run_dir: str, data_dir: str, recipe: str, options: Sequence[str],
        extra: Sequence[str]) -> Job:
    """The train.py run of `model` at `seed`: the recipe with a protocol's `options`, the data, and an evaluation on
    the test split."""
    return Job(model, run_dir, ('-c', recipe, '--data-dir', data_dir, '--test-split', 'test', *FAST, *options),
               tuple(extra), seed)


def describe_run(model: str, seed: int, run_dir: str, results: Mapping[str, object], train_images: int,
                 wall_minutes: Optional[float], protocol: str, where: str) -> Dict[str, object]:
    """The runs.csv row of a finished run: test accuracy, size and MACs of the trained model, its time (and
    the mean number of runs that shared the machine with it over its recorded sittings, when it was trained
    here rather than reused)."""
    size = model_size(model, run_dir)
    return {
        'model': model, 'seed': seed, 'top1': round(results['test_top1'], 2), 'top5': round(results['test_top5'], 2),
        'val_top1': round(results['top1'], 2), 'epochs': results['epochs'], 'train_images': train_images,
        'params_M': round(size.params / 1e6, 4), 'MMACs': round(size.macs / 1e6, 2),
        'train_minutes': round(results['train_minutes'], 2),
        'wall_minutes': round(wall_minutes, 2) if wall_minutes is not None else '',
        'runs_at_once': results.get('runs_at_once', '') if wall_minutes is not None else '',
        'machine': where, 'protocol': protocol,
    }


def ship_weights(model: str, run_dir: str, folder: str, row: Mapping[str, object]) -> str:
    """The trained model of `run_dir` saved for `timm.create_model('local-dir:FOLDER/weights/MODEL',
    pretrained=True)`, with the run's eval preprocessing in its config.json, and its runs.csv `row` (protocol,
    seed, test top-1) in study.json beside it; returns the folder."""
    from timm_cada.checkpoint import atomic_file, read_checkpoint
    from timm_cada.load import load_model, save_local_dir
    checkpoint = os.path.join(run_dir, LAST)
    net, data_args = load_model(model, checkpoint)
    out = os.path.join(folder, WEIGHTS, model)
    save_local_dir(net, data_args, read_checkpoint(checkpoint)['model_kwargs'], out, 'train/study.py (the weights)')
    with atomic_file(os.path.join(out, 'study.json')) as f:
        f.write(json.dumps({k: row[k] for k in ('model', 'seed', 'protocol', 'top1', 'top5')}, indent=2).encode())
    return out


def bias_figures(model: str, run_dir: str, data_dir: str) -> Dict[str, float]:
    """spatial_variation and context_sensitivity (timm_cada.analysis) of the run's final weights."""
    from timm_cada import analysis
    from timm_cada.load import load_model
    test = os.path.join(data_dir, 'test')
    paths = [os.path.join(test, c, f) for c in sorted(os.listdir(test))
             for f in sorted(os.listdir(os.path.join(test, c)))[:BIAS_IMAGES_PER_CLASS]]
    net, data_args = load_model(model, os.path.join(run_dir, LAST))
    images, _ = analysis.load_images(paths, net, data_args)
    metrics = analysis.model_metrics(analysis.capture_kernels(net, images), len(images))
    return {k: '' if metrics[k] is None else float(f'{metrics[k]:.4g}')  # 4 digits
            for k in ('spatial_variation', 'context_sensitivity')}


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    argv, extra = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--protocol', choices=('converged', 'one-epoch'), default='converged',
                        help='the budget: the converged protocol at the schedule its pilot chose (train/pilot.py; '
                             'default), or one epoch of 4,000 images per class')
    parser.add_argument('--models', nargs='+', default=None, help=f'models to run (default: the {len(MODELS)} of the study)')
    parser.add_argument('--seeds', nargs='+', type=int, default=None, help='seeds (default: 0 1 2)')
    parser.add_argument('--output', default=None,
                        help='folder of runs.csv, README.md and the plots (default: results/fashion_mnist, '
                             'output/study-quick with --quick)')
    parser.add_argument('--work', default=os.path.join('output', 'study'), help='folder of the run folders')
    parser.add_argument('--data-dir', default=None,
                        help='the ImageFolder to write and train on (default: .cache/fashion_mnist[-quick])')
    parser.add_argument('--source', default=None, help='folder of the Fashion-MNIST idx files (default: Debian\'s)')
    parser.add_argument('--quick', action='store_true', help=f'{" and ".join(QUICK_MODELS)}, seed 0, '
                        f'{QUICK_DATA.train_per_class} train images per class: a minute or two')
    parser.add_argument('--max-runs', type=int, default=None, help='stop after starting this many runs')
    parser.add_argument('--at-once', type=int, default=cores(),
                        help=f'runs trained side by side, each on its share of the cores (default: one per core, '
                             f'{cores()} here); each run\'s output goes to its run folder\'s {LOG} when > 1')
    args = parser.parse_args(argv)
    import timm_cada  # noqa: F401  (registers the models)
    from timm_cada.load import check_model_name
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.seeds = args.seeds if args.seeds is not None else list(QUICK_SEEDS if args.quick else SEEDS)
    try:
        for m in args.models:
            check_model_name(m)
    except ValueError as e:
        parser.error(f'--models: {e}')
    if len(set(args.models)) != len(args.models) or len(set(args.seeds)) != len(args.seeds):
        parser.error('--models and --seeds must not repeat a value')
    taken = [a for a in extra if a.split('=')[0] in STUDY_SETS]
    if taken:
        parser.error(f'options after -- must not set what the study sets for each run ({", ".join(taken)}); '
                     f'use --models, --seeds, --data-dir, --output')
    if args.max_runs is not None and args.max_runs < 0:
        parser.error(f'--max-runs must be >= 0, got {args.max_runs}')
    if args.at_once < 1:
        parser.error(f'--at-once must be >= 1, got {args.at_once}')
    args.output = args.output or (os.path.join('output', 'study-quick') if args.quick else RESULTS)
    args.data_dir = args.data_dir or default_data_dir('quick' if args.quick else args.protocol)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f'--output: {args.output} is a file')
    return args, extra


def main(argv: Optional[List[str]] = None) -> List[Tuple[str, List[str]]]:
    args, extra = parse_args(argv)
    from timm_cada.profile import machine
    full_study = os.path.abspath(args.output) == RESULTS and not args.quick and not extra  # the committed one
    chosen, convergence = pilot_decision() if full_study or args.protocol == 'converged' else (None, '')
    if args.quick:
        protocol = QUICK
    elif args.protocol == 'one-epoch':
        protocol = ONE_EPOCH
    elif chosen is None:
        sys.exit(f'study.py: error: --protocol converged: its pilot has not chosen the schedule yet '
                 f'({os.path.join(RESULTS, "pilot.csv")}: {convergence}); run python train/pilot.py (make pilot) '
                 f'first, or pass --protocol one-epoch')
    else:
        protocol = converged(chosen)
    if protocol.ships_weights and not extra:
        try:
            require_timm(SAVE_FOR_HF_TIMM, f'the {protocol.name} protocol (it saves its seed-0 models for local-dir:)')
        except RuntimeError as e:
            sys.exit(f'study.py: error: {e}')
    data = protocol.data
    counts = write_data(data, args.data_dir, args.source, 'study.py')
    os.makedirs(args.output, exist_ok=True)
    pid = protocol_hash(protocol, extra)
    runs_csv = os.path.join(args.output, 'runs.csv')
    rows = read_rows(runs_csv)
    done = {(r['model'], int(r['seed'])) for r in rows if r['protocol'] == pid}
    where = machine()
    todo = [(m, s) for s in args.seeds for m in args.models]  # seed by seed: every model has a run early
    if full_study:  # the report shows both budgets
        budgets = [Budget(p, protocol_hash(p))
                   for p in (ONE_EPOCH, *([converged(chosen)] if chosen is not None else []))]
    else:
        budgets = [Budget(protocol, pid, tuple(args.models), tuple(args.seeds))]

    def run_dir(model: str, seed: int) -> str:
        return os.path.join(args.work, pid, f'{model}-s{seed}')

    def ships(row: Mapping[str, object]) -> bool:
        return protocol.ships_weights and int(row['seed']) == 0 and not extra

    def shipped(row: Mapping[str, object]) -> bool:
        """Whether OUTPUT/weights/MODEL holds this row's run."""
        path = os.path.join(args.output, WEIGHTS, str(row['model']), 'study.json')
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            return json.load(f)['protocol'] == row['protocol']

    def report() -> List[Tuple[str, List[str]]]:
        """README.md and the plots from runs.csv; for the study itself, the verdicts quoted in the docs too."""
        rows = read_rows(runs_csv)
        verdicts = write_report(args.output, rows, budgets, RECIPE, args.quick, convergence if chosen else '')
        if full_study:
            update_quotes(verdict_quote(verdicts, [(b.protocol.name, len(b.rows(rows)), b.expected) for b in budgets]))
        return verdicts

    print(f'Study, {protocol.name} protocol {pid}: {len(todo)} runs, {len(done & set(todo))} already in {runs_csv}',
          flush=True)
    # rows written before runs.csv had the analysis figures get them from their run folder, where it is here;
    # and so do the shipped weights
    for r in rows:
        folder = run_dir(r['model'], r['seed'])
        if r['protocol'] != pid or not finished_results(folder, tested=True):
            continue
        if not r.get('spatial_variation'):
            r.update(bias_figures(r['model'], folder, args.data_dir))
            write_rows(runs_csv, rows)
        if ships(r) and not shipped(r):
            ship_weights(r['model'], folder, args.output, r)
    def train(todo: Sequence[Tuple[str, int]]) -> int:
        """Train (model, seed) runs, each row written and the report rewritten as it finishes; how many."""
        nonlocal rows
        jobs = [job(m, s, run_dir(m, s), args.data_dir, RECIPE, protocol.options, extra) for m, s in todo]
        trained = 0
        try:
            recorded = sum(r['protocol'] == pid for r in rows)
            for finished, results, wall in run_jobs(jobs, tested=True, max_runs=args.max_runs, at_once=args.at_once,
                                                    recorded=recorded):
                row = describe_run(finished.model, finished.seed, finished.run_dir, results, counts['train'], wall,
                                   pid, where)
                row.update(bias_figures(finished.model, finished.run_dir, args.data_dir))
                key = tuple(str(row[c]) for c in ROW_KEY)
                rows = [r for r in rows if tuple(str(r[c]) for c in ROW_KEY) != key] + [row]
                write_rows(runs_csv, rows)
                if ships(row):
                    ship_weights(finished.model, finished.run_dir, args.output, row)
                report()
                print(f'    test top-1 {row["top1"]:.2f}  ({row["train_minutes"]} min training)', flush=True)
                trained += 1
        except RunFailed as e:
            sys.exit(f'study.py: error: {e}')
        return trained

    train([(m, s) for m, s in todo if (m, s) not in done])
    # the converged study: more seeds for the claims still inconclusive, round by round, within the budget
    planned = args.models == list(MODELS) and args.seeds == list(SEEDS) and args.max_runs is None
    while full_study and protocol.name == 'converged' and planned:
        extra_round = seed_round([r for r in rows if r['protocol'] == pid], machine_hours)
        if not extra_round:
            break
        print(f'==> inconclusive claims: a round of extra seeds, {", ".join(f"{m} seed {s}" for m, s in extra_round)}',
              flush=True)
        if not train(extra_round):
            break
    verdicts = report()
    print(f'Wrote {runs_csv}, {os.path.join(args.output, "README.md")} and the plots'
          + ('; the verdicts quoted in README.md and MODEL_CARD.md' if full_study else ''))
    for axis, vs in verdicts:
        print(f'  {axis}: ' + ', '.join(f'{b.protocol.name} {v}' for b, v in zip(budgets, vs)))
    return verdicts


if __name__ == '__main__':
    main()
