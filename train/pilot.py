#!/usr/bin/env python3
""" The converged protocol's pilot: validation top-1 against the length of the training schedule, to choose the
number of epochs at which the study's models have converged. It reads the validation split only, never the
test set.

    python train/pilot.py                        # the pilot into results/fashion_mnist/pilot.md
    python train/pilot.py --epochs 1 2 4 --max-runs 6

Each (schedule, seed, model) is one train.py run of train/configs/fashion_mnist.yaml with the converged
protocol's options and `--epochs E` (a cosine schedule of its own over E epochs) on the whole training split, into
WORK/PROTOCOL/MODEL-eE-sSEED; the shorter schedules train first, `--at-once` runs side by side. After every run
OUTPUT/pilot.csv, OUTPUT/pilot.md and OUTPUT/pilot.png are written again, so the pilot can be stopped anywhere
and completed over several sittings (an interrupted run resumes from its last.pth.tar). The rule that chooses
the schedule, the models and the seeds are train/study_findings.py's, fixed before any run.
"""
import argparse
import os
import sys
from typing import List, Mapping, Optional, Sequence, Tuple

from timm_cada.checkpoint import atomic_file

from runs import Job, RunFailed, cores, run_jobs  # train/runs.py
from study import (  # train/study.py
    FAST, RECIPE, RESULTS, choose_schedule, default_data_dir, pilot_protocol_id, read_rows, write_data,
    write_rows)
from study_findings import (  # train/study_findings.py
    BUDGET_HOURS, CONVERGED_DATA, CONVERGED_OPTIONS, MODELS, PILOT_EPOCHS, PILOT_MODELS, PILOT_SEEDS,
    PILOT_TOLERANCE, SEEDS, Stats, settles)

COLUMNS = ('model', 'seed', 'epochs', 'val_top1', 'val_top5', 'train_images', 'train_minutes', 'wall_minutes',
           'runs_at_once', 'machine', 'protocol')
ROW_KEY = ('model', 'seed', 'epochs', 'protocol')


def pilot_options(epochs: int) -> Tuple[str, ...]:
    """train.py options of a pilot run of `epochs` epochs on top of the recipe (FAST ones apart)."""
    return (*CONVERGED_OPTIONS, '--epochs', str(epochs))


def plot(stats: Mapping[Tuple[str, int], Stats], rows: Sequence[Mapping[str, object]], path: str) -> None:
    """Validation top-1 (mean and standard deviation over seeds, each seed a dot) against the epochs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    models = sorted({m for m, _ in stats}, key=lambda m: MODELS.index(m) if m in MODELS else len(MODELS))
    for i, model in enumerate(models):
        color, shift = f'C{i}', 1.05 ** (i - (len(models) - 1) / 2)  # side by side on the log axis
        epochs = sorted(e for m, e in stats if m == model)
        ax.errorbar([e * shift for e in epochs], [stats[model, e].mean for e in epochs],
                    yerr=[stats[model, e].std for e in epochs], marker='o', capsize=4, color=color, label=model)
        seeds = [(int(r['epochs']), float(r['val_top1'])) for r in rows if r['model'] == model]
        ax.scatter([e * shift for e, _ in seeds], [v for _, v in seeds], s=12, color=color, alpha=0.5)
    ax.minorticks_off()
    ax.set_xscale('log', base=2)
    ax.set_xticks(list(PILOT_EPOCHS))
    ax.set_xticklabels([str(e) for e in PILOT_EPOCHS])
    ax.set_xlim(PILOT_EPOCHS[0] / 1.3, PILOT_EPOCHS[-1] * 1.3)
    ax.set_xlabel('epochs of the whole training split (each its own cosine schedule)')
    ax.set_ylabel('validation top-1 (%)')
    ax.set_title('The pilot: validation top-1 against the schedule (mean ± std over seeds)', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pilot_table(stats: Mapping[Tuple[str, int], Stats]) -> str:
    """Mean ± std (seeds) per model and schedule, and what doubling each schedule moved the mean."""
    lines = ['| model | ' + ' | '.join(f'{e} ep' for e in PILOT_EPOCHS) + ' |', '|---|' + '---|' * len(PILOT_EPOCHS)]
    for model in PILOT_MODELS:
        cells = []
        for e in PILOT_EPOCHS:
            s, before = stats.get((model, e)), stats.get((model, e // 2))
            cell = '' if s is None else f'{s.mean:.2f} ± {s.std:.2f} ({s.n})'
            if s is not None and before is not None and e > 1:
                cell += f'<br>{s.mean - before.mean:+.2f} from {e // 2} ep'
            cells.append(cell)
        lines.append(f'| {model} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_pilot(out: str, rows: Sequence[Mapping[str, object]], protocol: str, expected: int) -> Optional[int]:
    """pilot.md and pilot.png from the rows of `protocol`; returns the chosen epochs (None: not decided yet)."""
    rows = [r for r in rows if r['protocol'] == protocol]
    choice = choose_schedule(rows)
    stats, chosen = choice.stats, choice.epochs
    if choice.rows:
        plot(stats, choice.rows, os.path.join(out, 'pilot.png'))
    if chosen is None:
        decision = ('Not decided yet: the rule needs every pilot model\'s seeds at a schedule and at its double '
                    '(and the budget to fit the shortest).')
    elif settles(stats, chosen):
        decision = (f'**{chosen} epochs**: the shortest schedule within the budget whose doubling moved every pilot '
                    f'model\'s mean validation top-1 by less than {PILOT_TOLERANCE} points or its seed spread.')
    else:
        decision = (f'**{chosen} epochs, not settled**: the longest schedule within the budget; no doubling of a '
                    f'schedule within it settled (see the table).')
    budget = ''
    if choice.speed:
        epochs, images = chosen or max(PILOT_EPOCHS), int(choice.rows[0]['train_images'])
        budget = (f'At the pilot\'s measured throughput ({choice.speed[0]:.0f} training images/s of the machine over '
                  f'its {choice.speed[1]}-epoch runs, side by side; start-up and validation included but in resumed '
                  f'runs), the converged protocol at {epochs} epochs ({len(MODELS)} models x {len(SEEDS)} seeds x '
                  f'{epochs} x {images:,} images) takes about {choice.hours(epochs):.1f} hours (budget: {BUDGET_HOURS} '
                  f'hours).')
    text = f'''# The converged protocol's pilot

Written by `python train/pilot.py`; do not edit by hand. {len(rows)} of {expected} runs done. Protocol
`{protocol}` (the recipe, the data and `{" ".join(CONVERGED_OPTIONS)}`; each run adds `--epochs E`).

**Question.** At how many epochs have the study's models converged? The one-epoch protocol stops every model
early in its training (83.6-85.2 % test top-1, where a ResNet-18 reaches 94.9 %), so its verdicts compare how
fast the models start to learn.

**Runs.** {", ".join(PILOT_MODELS)} (strict, relaxed and no spatial invariance), seeds
{", ".join(map(str, PILOT_SEEDS))}, each trained for {", ".join(map(str, PILOT_EPOCHS))} epochs of the whole training split
({f"{int(rows[0]['train_images']):,}" if rows else "?"} images; each schedule its own cosine over its epochs), with
train/configs/fashion_mnist.yaml otherwise unchanged (not tuned). Validation top-1 is on the
{CONVERGED_DATA.val_per_class * 10:,} held-out validation images, with the final weights; the test set is not looked at.

**Rule (fixed before the runs; amended 2026-12-07, see its end).** The converged schedule is the shortest E
whose doubling moves the mean validation top-1 of every pilot model by less than {PILOT_TOLERANCE} points, or by
less than the larger seed standard deviation of E and 2E, among the schedules whose converged protocol fits the
budget of {BUDGET_HOURS} hours at the pilot's measured throughput (that of its longest runs, a resumed run by its
training minutes; wall time, so tests beside them or a pause make it slower); when the doubling of none of those settles, the longest
that fits, reported as not settled. (The budget condition and the case of no settled schedule were added on
2026-12-07, after the 8-epoch runs of seed 0 and before any 16-epoch run: the first rule had no answer for them.)

**Decision.** {decision}

{budget}

## Validation top-1 (%), mean ± std (seeds), and the move from the schedule half as long

{pilot_table(stats)}

![pilot](pilot.png)
'''
    with atomic_file(os.path.join(out, 'pilot.md')) as f:
        f.write(text.encode())
    return chosen


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(PILOT_MODELS), help='models (default: the pilot\'s)')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(PILOT_SEEDS),
                        help=f'seeds (default: {" ".join(map(str, PILOT_SEEDS))})')
    parser.add_argument('--epochs', nargs='+', type=int, default=list(PILOT_EPOCHS),
                        help=f'schedules, in epochs (default: {" ".join(map(str, PILOT_EPOCHS))})')
    parser.add_argument('--output', default=RESULTS, help='folder of pilot.csv, pilot.md and pilot.png')
    parser.add_argument('--work', default=os.path.join('output', 'pilot'), help='folder of the run folders')
    parser.add_argument('--data-dir', default=default_data_dir('converged'),
                        help='the ImageFolder to write and train on')
    parser.add_argument('--source', default=None, help='folder of the Fashion-MNIST idx files (default: Debian\'s)')
    parser.add_argument('--max-runs', type=int, default=None, help='stop after starting this many runs')
    parser.add_argument('--at-once', type=int, default=cores(), help='runs trained side by side (default: one '
                        'per core)')
    args = parser.parse_args(argv)
    if min(args.epochs) < 1:
        parser.error(f'--epochs must be integers >= 1, got {" ".join(map(str, args.epochs))}')
    if args.at_once < 1:
        parser.error(f'--at-once must be >= 1, got {args.at_once}')
    if args.max_runs is not None and args.max_runs < 0:
        parser.error(f'--max-runs must be >= 0, got {args.max_runs}')
    import timm_cada  # noqa: F401  (registers the models)
    from timm_cada.load import check_model_name
    try:
        for m in args.models:
            check_model_name(m)
    except ValueError as e:
        parser.error(f'--models: {e}')
    return args


def main(argv: Optional[List[str]] = None) -> Optional[int]:
    args = parse_args(argv)
    from timm_cada.profile import machine
    data = CONVERGED_DATA
    counts = write_data(data, args.data_dir, args.source, 'pilot.py')
    os.makedirs(args.output, exist_ok=True)
    protocol = pilot_protocol_id(data)
    csv_path = os.path.join(args.output, 'pilot.csv')
    rows = read_rows(csv_path)
    done = {(r['model'], int(r['seed']), int(r['epochs'])) for r in rows if r['protocol'] == protocol}
    todo = [(m, s, e) for e in sorted(args.epochs) for s in args.seeds for m in args.models]
    expected = len(todo)
    jobs = {}
    for m, s, e in todo:
        if (m, s, e) not in done:
            run_dir = os.path.join(args.work, protocol, f'{m}-e{e}-s{s}')
            jobs[run_dir] = (e, Job(m, run_dir, ('-c', RECIPE, '--data-dir', args.data_dir, *pilot_options(e), *FAST),
                                    seed=s))
    print(f'Pilot {protocol}: {len(todo)} runs, {len(todo) - len(jobs)} already in {csv_path}', flush=True)
    where = machine()
    try:
        for job, results, wall in run_jobs([j for _, j in jobs.values()], tested=False, max_runs=args.max_runs,
                                           at_once=args.at_once):
            epochs = jobs[job.run_dir][0]
            row = {'model': job.model, 'seed': job.seed, 'epochs': epochs, 'val_top1': round(results['top1'], 2),
                   'val_top5': round(results['top5'], 2), 'train_images': counts['train'],
                   'train_minutes': round(results['train_minutes'], 2),
                   'wall_minutes': '' if wall is None else round(wall, 2),
                   'runs_at_once': '' if wall is None else results['runs_at_once'], 'machine': where,
                   'protocol': protocol}
            key = tuple(str(row[c]) for c in ROW_KEY)
            rows = [r for r in rows if tuple(str(r[c]) for c in ROW_KEY) != key] + [row]
            write_rows(csv_path, rows, COLUMNS, ('epochs', 'model', 'seed'))
            write_pilot(args.output, read_rows(csv_path), protocol, expected)
            print(f'    {job.label}, {epochs} epochs: validation top-1 {row["val_top1"]:.2f}', flush=True)
    except RunFailed as e:
        sys.exit(f'pilot.py: error: {e}')
    chosen = write_pilot(args.output, read_rows(csv_path), protocol, expected)
    print(f'Wrote {csv_path}, pilot.md and pilot.png in {args.output}; converged schedule: '
          f'{"not decided yet" if chosen is None else f"{chosen} epochs"}')
    return chosen


if __name__ == '__main__':
    main()
