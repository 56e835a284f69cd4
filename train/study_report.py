""" The study's report: OUTPUT/README.md (protocol, results table, findings with their verdicts), one PNG per
ablation axis, and the verdicts quoted in README.md and MODEL_CARD.md. Written by train/study.py from runs.csv's
rows, judged by train/study_findings.py. """
import dataclasses
import os
import textwrap
from typing import List, Mapping, Optional, Sequence, Tuple

from study_findings import (  # train/study_findings.py
    BIAS_IMAGES_PER_CLASS, BUDGET_HOURS, DEPTH, EXTRA_SEEDS, FINDINGS, MARGIN, MODELS, SE_FACTOR, SEEDS, Finding,
    Judged, Protocol, Stats, judge_findings, model_name, model_stats)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# README.md and MODEL_CARD.md quote the verdicts between these markers; a study into the default --output
# rewrites them (tests/test_study.py checks them against results/fashion_mnist/runs.csv).
QUOTE_START, QUOTE_END = '<!-- study-verdicts:start (python train/study.py) -->', '<!-- study-verdicts:end -->'
QUOTED_IN = (os.path.join(REPO, 'README.md'), os.path.join(REPO, 'MODEL_CARD.md'))


def axis_models(axis: str, models: Sequence[str]) -> List[str]:
    """The study's models of one ablation axis: the axis' references then its own variants, as run."""
    from timm_cada.models import ablation_models
    wanted = ablation_models(axis, depth=DEPTH)
    return [m for m in wanted if m in models]


def plot_axis(axis: str, rows: Sequence[Mapping[str, object]], stats: Mapping[str, Stats], path: str,
              budget: str) -> bool:
    """Top-1 (mean and standard deviation over seeds, each seed a dot) against the axis' knob, at the budget named
    in the title; False when none of its models has a result yet."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from timm_cada.models import ABLATION_AXES, VARIANTS

    models = axis_models(axis, list(stats))
    if not models:
        return False
    seeds = {m: [float(r['top1']) for r in rows if r['model'] == m] for m in models}
    info = ABLATION_AXES[axis]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if axis == 'locality':  # two curves against k
        for mixer, color, shift in (('dw', 'tab:blue', -0.12), ('cada', 'tab:orange', 0.12)):
            ks = sorted(VARIANTS[m].args['kernel_size'] for m in models if VARIANTS[m].args['mixer'] == mixer)
            names = [model_name(f'{mixer}_k{k}') for k in ks]
            if not ks:
                continue
            ax.errorbar([k + shift for k in ks], [stats[m].mean for m in names], yerr=[stats[m].std for m in names], marker='o',
                        capsize=4, color=color, label=mixer.upper())
            for k, m in zip(ks, names):
                ax.scatter([k + shift] * len(seeds[m]), seeds[m], s=12, color=color, alpha=0.5)
        ks = sorted({VARIANTS[m].args['kernel_size'] for m in models})
        ax.set_xticks(ks)
        ax.set_xlim(ks[0] - 1, ks[-1] + 1)
        ax.set_xlabel('window size k')
        ax.legend()
    else:
        xs = range(len(models))
        ax.errorbar(xs, [stats[m].mean for m in models], yerr=[stats[m].std for m in models], fmt='o', capsize=5,
                    color='tab:orange')
        for x, m in zip(xs, models):
            ax.scatter([x] * len(seeds[m]), seeds[m], s=12, color='tab:gray', alpha=0.7)
        labels = [m[len(model_name('')):] + ('\n' + textwrap.fill(VARIANTS[m].setting, 18) if VARIANTS[m].axis == axis
                                         else '') for m in models]
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_xlabel(info.knob)
    ax.set_ylabel('test top-1 (%)')
    ax.set_title(f'{info.title}, {budget} budget\n(Fashion-MNIST, ResNet-{DEPTH}/4, mean ± std over seeds)',
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return '' if x is None else f'{x:+.{digits}f}'


@dataclasses.dataclass(frozen=True)
class Budget:
    """One protocol of the report: its definition, its hash in runs.csv, and the models and seeds planned (those
    of the whole study unless a subset was asked for)."""
    protocol: Protocol
    hash: str
    models: Tuple[str, ...] = tuple(MODELS)
    seeds: Tuple[int, ...] = tuple(SEEDS)

    @property
    def expected(self) -> int:
        """The runs that make it complete."""
        return len(self.models) * len(self.seeds)

    def rows(self, rows: Sequence[Mapping[str, object]]) -> List[Mapping[str, object]]:
        return [r for r in rows if r['protocol'] == self.hash]

    def label(self) -> str:
        return f'{self.protocol.name} (`{self.hash}`)'


def images_per_run(rows: Sequence[Mapping[str, object]]) -> Optional[int]:
    """Training images a run of these rows saw (images of the split x epochs), None without rows."""
    return int(rows[0]['train_images']) * int(rows[0]['epochs']) if rows else None


def results_table(rows: Sequence[Mapping[str, object]], budgets: Sequence[Budget]) -> str:
    """Test top-1 mean ± std (seeds) per model at each budget, the train minutes of a run at each, and the
    analysis figures of the trained models at the last budget that has them."""
    from timm_cada.models import VARIANTS
    per = [(b, b.rows(rows), model_stats(b.rows(rows))) for b in budgets]
    names = ' | '.join(b.protocol.name for b in budgets)
    lines = [f'| model | axis (setting) | params (M) | MMACs | {names} | train min / run ({names}) '
             f'| spatial variation | context sensitivity |',
             '|---|---|---|---|' + '---|' * len(budgets) + '---|---|---|']
    models = {m for _, _, stats in per for m in stats}
    for m in [m for m in MODELS if m in models] + sorted(models - set(MODELS)):
        v = VARIANTS.get(m)
        cells, minutes, figures, first = [], [], ['', ''], None
        for _, mine, stats in per:
            mine = [r for r in mine if r['model'] == m]
            if not mine:
                cells.append('')
                minutes.append('')
                continue
            first = first or mine[0]
            s = stats[m]
            cells.append(f'{s.mean:.2f} ± {s.std:.2f} ({s.n})')
            minutes.append(f'{sum(float(r["train_minutes"]) for r in mine) / len(mine):.1f}')
            values = [[float(r[k]) for r in mine if r.get(k) not in (None, '')]
                      for k in ('spatial_variation', 'context_sensitivity')]
            figures = [f'{sum(x) / len(x):.3g}' if x else f for x, f in zip(values, figures)]
        lines.append(f'| {m} | {v.axis_label if v else ""} | {first["params_M"]} | {first["MMACs"]} | '
                     f'{" | ".join(cells)} | {" / ".join(minutes)} | {" | ".join(figures)} |')
    return '\n'.join(lines)


def plot_contrasts(finding: Finding, judged: Sequence[Tuple[Budget, Sequence[Judged], int]], path: str) -> bool:
    """Each claim's contrast (± SE_FACTOR SE) against the training images per run of each budget; False when no
    budget judged a claim yet."""
    points = [(images, j) for _, js, images in judged for j in js if j.value is not None]
    if not points:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from timm_cada.models import ABLATION_AXES
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, claim in enumerate(finding.claims):
        mine = [(images, j) for images, j in points if j.claim == claim]
        shift = 1.06 ** (i - (len(finding.claims) - 1) / 2)  # side by side on the log axis
        ax.errorbar([images * shift for images, _ in mine], [j.value for _, j in mine],
                    yerr=[SE_FACTOR * j.se for _, j in mine], marker='o', capsize=4, color=f'C{i}',
                    label=textwrap.shorten(claim.text, 70))
        if claim.margin:
            ax.axhline(-claim.margin, color=f'C{i}', linestyle=':', linewidth=1)
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xscale('log')
    ax.minorticks_off()
    budgets = sorted({images for images, _ in points})
    ax.set_xticks(budgets)
    ax.set_xticklabels([f'{b // 1000:,}k' for b in budgets])
    ax.set_xlim(budgets[0] / 1.5, budgets[-1] * 1.5)
    ax.set_xlabel('training images per run (the budgets of the study)')
    ax.set_ylabel(f'contrast of test top-1 (pp, ± {SE_FACTOR:g} SE)')
    margins = ' (dotted: -margin)' if any(c.margin for c in finding.claims) else ''
    ax.set_title(f'{ABLATION_AXES[finding.axis].title}: the claims\' contrasts against the budget{margins}',
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def axis_budget(axis: str, rows: Sequence[Mapping[str, object]], budgets: Sequence[Budget]) -> Budget:
    """The budget whose top-1 an axis plot shows: the last in which every model of the axis has a run (a study
    under way shows the budget before it until the new one covers the axis), else the last with a run of it."""
    wanted = set(axis_models(axis, MODELS))
    have = [(b, {str(r['model']) for r in b.rows(rows)} & wanted) for b in budgets]
    return next((b for b, got in reversed(have) if got == wanted), None) or next(
        (b for b, got in reversed(have) if got), budgets[-1])


def findings_section(rows: Sequence[Mapping[str, object]], budgets: Sequence[Budget], out: str,
                     ) -> Tuple[str, List[Tuple[str, List[str]]]]:
    """The findings in markdown, each with its claims judged at every budget, the plot of their contrasts
    against the budget and the plot of top-1 along the axis (at `axis_budget`); and (axis, the verdict at each
    budget) of each finding."""
    from timm_cada.models import ABLATION_AXES
    judged = [(b, judge_findings(model_stats(b.rows(rows))), images_per_run(b.rows(rows))) for b in budgets]
    parts, verdicts = [], []
    for i, f in enumerate(FINDINGS):
        at = [(b, js[i][1], js[i][2], images) for b, js, images in judged]
        verdicts.append((f.axis, [v for _, _, v, _ in at]))
        summary = ', '.join(f'{b.protocol.name} **{v}**' for b, _, v, _ in at)
        parts.append(f'### {i + 1}. {ABLATION_AXES[f.axis].title}: {summary}\n\n> {f.statement} (the abstract)\n')
        parts.append('| claim | budget | contrast (pp) | SE | margin | verdict |\n|---|---|---|---|---|---|')
        for j in range(len(f.claims)):
            for b, js, _, _ in at:
                c = js[j]
                parts.append(f'| {c.claim.text} | {b.protocol.name} | {_fmt(c.value)} | '
                             f'{"" if c.se is None else f"{c.se:.2f}"} | {c.claim.margin:g} | {c.verdict} |')
        if plot_contrasts(f, [(b, js, images) for b, js, _, images in at if images], os.path.join(out, f'{f.axis}-budgets.png')):
            parts.append(f'\n![{f.axis}: contrasts against the budget]({f.axis}-budgets.png)')
        shown = axis_budget(f.axis, rows, budgets)
        mine = shown.rows(rows)
        if plot_axis(f.axis, mine, model_stats(mine), os.path.join(out, f'{f.axis}.png'), shown.protocol.name):
            parts.append(f'\n![{f.axis}]({f.axis}.png)\n\n(Test top-1 along the axis, {shown.protocol.name}.)')
        parts.append('')
    return '\n'.join(parts), verdicts


def timed_rows(rows: Sequence[Mapping[str, object]]) -> List[Mapping[str, object]]:
    """The rows that time their run: trained here (wall minutes and runs side by side recorded) with every sitting
    recorded (train/runs.py's SITTINGS; a run resumed after a sitting that was not, such as one killed outright,
    has wall minutes below its training minutes, which add up over all its sittings).
    Wall time counts whatever else ran beside: tests beside the runs, or a pause, make the machine look slower."""
    return [r for r in rows if r.get('wall_minutes') not in (None, '') and r.get('runs_at_once') not in (None, '')
            and float(r['wall_minutes']) >= float(r['train_minutes'])]


def throughput(rows: Sequence[Mapping[str, object]]) -> Optional[Tuple[float, int, float]]:
    """(training images per second of the machine, images, machine minutes) over the `timed_rows`: a run's wall
    minutes count 1/k of the machine when k runs (on average) trained side by side. None if none."""
    timed = timed_rows(rows)
    images = sum(int(r['train_images']) * int(r['epochs']) for r in timed)
    minutes = sum(float(r['wall_minutes']) / float(r['runs_at_once']) for r in timed)
    return (images / (minutes * 60), images, minutes) if minutes else None


def machine_hours(rows: Sequence[Mapping[str, object]]) -> float:
    """The hours of the machine that the rows' runs took: each run's wall minutes over all its recorded sittings
    (its training minutes where they are more: a sitting not recorded), over the mean runs side by side."""
    return sum(max(float(r.get('wall_minutes') or 0), float(r['train_minutes'])) / float(r.get('runs_at_once') or 1)
               for r in rows) / 60


def hours_left(rows: Sequence[Mapping[str, object]], models: Sequence[str] = MODELS,
               seeds: Sequence[int] = SEEDS) -> Tuple[int, float]:
    """(runs of `models` x `seeds` not in `rows`, the machine hours they take at each model's mean `machine_hours`
    per run so far, or at the mean run's of `rows` for a model without a run)."""
    mean = machine_hours(rows) / len(rows) if rows else 0.0
    runs, hours = 0, 0.0
    for model in models:
        mine = [r for r in rows if r['model'] == model]
        left = len(set(seeds) - {int(r['seed']) for r in mine})
        runs += left
        hours += left * (machine_hours(mine) / len(mine) if mine else mean)
    return runs, hours


def budget_use(rows: Sequence[Mapping[str, object]], models: Sequence[str] = MODELS,
               seeds: Sequence[int] = SEEDS) -> str:
    """The converged protocol's machine time against BUDGET_HOURS: taken so far, and what its planned runs (of
    `models` x `seeds`) take in all at the pace so far."""
    done = machine_hours(rows)
    runs, left = hours_left(rows, models, seeds)
    text = f'Machine time: {done:.1f} h so far of the {BUDGET_HOURS} h budget'
    if runs and rows:
        total = done + left
        text += (f'; the {runs} planned runs left take about {left:.1f} h more at each model\'s mean per run so far '
                 f'(the mean run\'s for a model not run yet): {total:.1f} h in all, '
                 + ('within the budget' if total <= BUDGET_HOURS else f'{total - BUDGET_HOURS:.1f} h over it'))
    return text + '.'


def pilot_speed(rows: Sequence[Mapping[str, object]]) -> Optional[Tuple[float, int]]:
    """(training images per second of the machine, epochs) over the pilot rows of its longest schedule: the runs
    most like the converged protocol's (start-up spread over the most epochs) and the latest trained, each run's
    time as `machine_hours` counts it (a run resumed after a sitting that was not recorded: by its training
    minutes, which add up over all its sittings)."""
    if not rows:
        return None
    epochs = max(int(r['epochs']) for r in rows)
    longest = [r for r in rows if int(r['epochs']) == epochs]
    hours = machine_hours(longest)
    return (sum(int(r['train_images']) * epochs for r in longest) / (hours * 3600), epochs) if hours else None


def runs_state(done: int, expected: int) -> str:
    """How many runs a budget has: of those planned, and the extra seeds beyond them."""
    if done <= expected:
        return f'{done} of {expected} runs'
    return f'{done} runs, the {expected} planned and {done - expected} extra seeds for inconclusive claims'


def budget_section(b: Budget, rows: Sequence[Mapping[str, object]], convergence: str) -> str:
    """A budget's bullet of the protocol section: its data, schedule, options, machine and time (the converged
    budget's against BUDGET_HOURS)."""
    mine = b.rows(rows)
    data = b.protocol.data
    counts = f'{data.train_per_class:,} images per class' if data.train_per_class else 'every image'
    epochs = sorted({int(r['epochs']) for r in mine})
    train = sum(float(r['train_minutes']) for r in mine)
    wall = sum(float(r['wall_minutes'] or r['train_minutes']) for r in mine)
    speed = throughput(mine)
    machines = sorted({str(r['machine']) for r in mine})
    text = (f'- **{b.protocol.name}** (`{b.hash}`): {runs_state(len(mine), b.expected)}; {counts} of the training '
            f'split left after the validation images; train.py options on top of the recipe: '
            f'`{" ".join(b.protocol.options) or "none"}`.')
    if mine:
        text += (f' {" / ".join(map(str, epochs))} epoch(s) ({images_per_run(mine) or 0:,} training images per run). '
                 f'Machine: {"; ".join(machines)}. Training time (every epoch, over every sitting): {train:.0f} min; '
                 f'wall time of the train.py processes, start-up and the test evaluation included: {wall:.0f} min (a '
                 f'resumed run counts its recorded sittings).')
    if speed:
        text += (f' Throughput of its runs with every sitting timed: {speed[0]:.0f} training images/s of the machine '
                 f'({speed[1]:,} images in {speed[2]:.0f} machine-minutes; runs side by side share it).')
    if b.protocol.name == 'converged':
        text += ' ' + budget_use(mine, b.models, b.seeds)
    return text + (f' {convergence}' if convergence else '')


def write_report(out: str, rows: Sequence[Mapping[str, object]], budgets: Sequence[Budget], recipe: str,
                 quick: bool = False, convergence: str = '') -> List[Tuple[str, List[str]]]:
    """README.md and the PNGs of OUTPUT from runs.csv's rows of `budgets`; `convergence` says how the converged
    budget's schedule was chosen. Returns each finding's (axis, its verdict at each budget)."""
    findings, verdicts = findings_section(rows, budgets, out)
    with open(recipe) as fh:
        recipe_text = fh.read()
    pilot = ('The one-epoch protocol\'s pilot (seed spread against the differences looked for): '
             '[pilot-one-epoch.md](pilot-one-epoch.md).' if os.path.isfile(os.path.join(out, 'pilot-one-epoch.md'))
             else '')
    states = [(b, len(b.rows(rows))) for b in budgets]
    status = 'Runs done: ' + '; '.join(f'{b.protocol.name} {runs_state(done, b.expected)}' for b, done in states)
    if any(done < b.expected for b, done in states):
        status += ' (in progress: `make study` continues it; the rows below are the runs finished so far)'
    names = ' | '.join(b.protocol.name for b in budgets)
    held_out = '; '.join(sorted({f'{b.protocol.data.val_per_class:,} images per class (seed {b.protocol.data.seed})'
                                 for b in budgets}))
    verdict_rows = '\n'.join(f'| {axis} | ' + ' | '.join(f'**{v}**' for v in vs) + ' |' for axis, vs in verdicts)
    seeds = ', '.join(str(s) for s in sorted({int(r['seed']) for b in budgets for r in b.rows(rows)}))
    text = f'''# The ablation on Fashion-MNIST{" (--quick)" if quick else ""}

Written by `python train/study.py` (`make study`); do not edit by hand. {status}.
Protocols (runs.csv holds one row per model, seed and protocol): {", ".join(b.label() for b in budgets)}.

## Verdicts

| finding | {names} |
|---|{"---|" * len(budgets)}
{verdict_rows}

## Protocol

- **Data**: Fashion-MNIST (70,000 28x28 grey product photos, 10 classes, MIT licence) from Debian's
  `dataset-fashion-mnist`, written by `train/fashion_mnist.py`: {held_out} of the official train set held out as
  validation, the budgets below train on the rest; top-1 and top-5 are on the official
  10,000-image test set, evaluated once per run with its final weights. The validation split selected nothing
  but the converged budget's schedule (its pilot); the test set selected nothing.
- **Scale-down** from the paper's ResNet-50 on 224 px ImageNet: ResNet-26 (2, 2, 2, 2 blocks) at a quarter of
  the width (stage widths 16/32/64/128, ~0.5 M parameters), 1 input channel, the small-input stem (3x3 stride 1,
  no max-pool: `small_stem=True`), so the mixers see 28/14/7/4 maps as ResNet-50's see 56/28/14/7 at 224 px, and
  k = 3..13 spans local to global again.
- **Budgets** (seeds {seeds or "-"}):
{chr(10).join("  " + budget_section(b, rows, convergence if b.protocol.name == "converged" else "") for b in budgets)}
- **Recipe** (`train/configs/fashion_mnist.yaml`, every run of every budget, with the budget's options):

```yaml
{recipe_text.strip()}
```

{pilot}

## Verdict rule (fixed before the runs)

A claim compares models by a contrast of their mean test top-1 over seeds, sum_i c_i mean_i, with standard
error SE = sqrt(sum_i c_i^2 s_i^2 / n_i) (s_i: the sample standard deviation over the n_i seeds). "A better
than B" is the contrast A - B with margin m = 0; "A no worse than B" the same contrast with margin
m = {MARGIN} percentage points. A claim is **reproduced** when contrast - {SE_FACTOR:g} SE > -m, **contradicted**
when contrast + {SE_FACTOR:g} SE < -m, and **inconclusive** otherwise; a finding is reproduced when all its claims
are, contradicted when any is. With three seeds, two standard errors is a screening rule, not a 95 % test. In
the converged protocol the models of a claim still inconclusive after its 48 runs get one more seed per round
(seeds {", ".join(map(str, EXTRA_SEEDS))}) while the budget allows, and the claim is judged again: a chance verdict is
likelier so than with the seeds fixed in advance (the results table gives each model's number of seeds).
The claims are our reading of the abstract (the paper's full text is not available to the project). The same
rule judges every budget.

## Results (test top-1, %, mean ± std (seeds))

Spatial variation and context sensitivity are `timm_cada.analysis`' figures of the trained model (mean over its
mixers, then over seeds, at the last budget that has the model; docs/design.md defines them), on the first
{BIAS_IMAGES_PER_CLASS} test images of each class.

{results_table(rows, budgets) if any(done for _, done in states) else "No run has finished yet."}

## Findings

{findings}'''
    with open(os.path.join(out, 'README.md'), 'w') as fh:
        fh.write(text)
    return verdicts


def verdict_quote(verdicts: Sequence[Tuple[str, Sequence[str]]], budgets: Sequence[Tuple[str, int, int]]) -> str:
    """The block README.md and MODEL_CARD.md show: each finding's verdict at each budget ((name, runs done, runs
    expected) each), and how much of each ran."""
    from timm_cada.models import ABLATION_AXES
    states = [f'{name}: complete, {done} runs' if done >= expected else f'{name}: {done} of {expected} runs'
              for name, done, expected in budgets]
    note = ''
    if any(v == 'pending' for _, vs in verdicts for v in vs):
        note = ' "pending": a claim still lacks the seeds of a model it compares, and none is contradicted.'
    lines = [f'Fashion-MNIST study at CPU scale ([results/fashion_mnist/](results/fashion_mnist/README.md); '
             f'{"; ".join(states)}).{note}',
             '',
             '| finding (the abstract) | ' + ' | '.join(name for name, _, _ in budgets) + ' |',
             '|---|' + '---|' * len(budgets)]
    statements = {f.axis: f.statement for f in FINDINGS}
    lines += [f'| {ABLATION_AXES[axis].title}: {statements[axis]} | ' + ' | '.join(vs) + ' |' for axis, vs in verdicts]
    return '\n'.join(lines)


def update_quotes(quote: str, paths: Sequence[str] = QUOTED_IN) -> None:
    """Replace the text between QUOTE_START and QUOTE_END in each file of `paths`."""
    for path in paths:
        with open(path) as f:
            text = f.read()
        head, found, rest = text.partition(QUOTE_START)
        _, end, tail = rest.partition(QUOTE_END)
        if not (found and end):
            raise ValueError(f'{path} lacks the markers {QUOTE_START} ... {QUOTE_END}')
        with open(path, 'w') as f:
            f.write(f'{head}{QUOTE_START}\n{quote}\n{QUOTE_END}{tail}')
