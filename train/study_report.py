""" The study's report: OUTPUT/README.md (protocol, results table, findings with their verdicts), one PNG per
ablation axis, and the verdicts quoted in README.md and MODEL_CARD.md. Written by train/study.py from runs.csv's
rows, judged by train/study_findings.py. """
import os
import textwrap
from typing import List, Mapping, Optional, Sequence, Tuple

from study_findings import (  # train/study_findings.py
    BIAS_IMAGES_PER_CLASS, DEPTH, FINDINGS, DataSpec, MARGIN, MODELS, SE_FACTOR, Stats, judge_findings, model_name, model_stats)

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


def plot_axis(axis: str, rows: Sequence[Mapping[str, object]], stats: Mapping[str, Stats], path: str) -> bool:
    """Top-1 (mean and standard deviation over seeds, each seed a dot) against the axis' knob; False when none of
    its models has a result yet."""
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
    ax.set_title(f'{info.title} (Fashion-MNIST, ResNet-{DEPTH}/4, mean ± std over seeds)', fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return '' if x is None else f'{x:+.{digits}f}'


def results_table(rows: Sequence[Mapping[str, object]], stats: Mapping[str, Stats]) -> str:
    from timm_cada.models import VARIANTS
    lines = ['| model | axis (setting) | seeds | test top-1 mean ± std | params (M) | MMACs | train min / run '
             '| spatial variation | context sensitivity |', '|---|---|---|---|---|---|---|---|---|']
    order = [m for m in MODELS if m in stats] + sorted(m for m in stats if m not in MODELS)
    for m in order:
        mine = [r for r in rows if r['model'] == m]
        minutes = sum(float(r['train_minutes']) for r in mine) / len(mine)
        v = VARIANTS.get(m)
        figures = []
        for key in ('spatial_variation', 'context_sensitivity'):
            values = [float(r[key]) for r in mine if r.get(key) not in (None, '')]
            figures.append(f'{sum(values) / len(values):.3g}' if values else '')
        lines.append(f'| {m} | {v.axis_label if v else ""} | {stats[m].n} | {stats[m].mean:.2f} ± {stats[m].std:.2f} '
                     f'| {mine[0]["params_M"]} | {mine[0]["MMACs"]} | {minutes:.1f} | {" | ".join(figures)} |')
    return '\n'.join(lines)


def findings_section(stats: Mapping[str, Stats], plots: Mapping[str, str]) -> Tuple[str, List[Tuple[str, str]]]:
    """The findings in markdown and (axis, verdict) of each."""
    from timm_cada.models import ABLATION_AXES
    parts, verdicts = [], []
    for i, (f, judged, verdict) in enumerate(judge_findings(stats), 1):
        verdicts.append((f.axis, verdict))
        parts.append(f'### {i}. {ABLATION_AXES[f.axis].title}: **{verdict}**\n\n> {f.statement} (the abstract)\n')
        parts.append('| claim | contrast (pp) | SE | margin | verdict |\n|---|---|---|---|---|')
        for j in judged:
            parts.append(f'| {j.claim.text} | {_fmt(j.value)} | {"" if j.se is None else f"{j.se:.2f}"} | '
                         f'{j.claim.margin:g} | {j.verdict} |')
        if f.axis in plots:
            parts.append(f'\n![{f.axis}]({plots[f.axis]})')
        parts.append('')
    return '\n'.join(parts), verdicts


def throughput(rows: Sequence[Mapping[str, object]]) -> Optional[Tuple[float, int, float]]:
    """(training images per second of the machine, images, machine minutes) over the rows of runs trained in one
    sitting: a run's wall minutes count 1/k of the machine when k runs trained side by side. None if none."""
    timed = [r for r in rows if r.get('wall_minutes') not in (None, '') and r.get('runs_at_once') not in (None, '')]
    images = sum(int(r['train_images']) * int(r['epochs']) for r in timed)
    minutes = sum(float(r['wall_minutes']) / int(r['runs_at_once']) for r in timed)
    return (images / (minutes * 60), images, minutes) if minutes else None


def write_report(out: str, rows: Sequence[Mapping[str, object]], expected: int, protocol: str, data: DataSpec,
                 recipe: str, quick: bool) -> List[Tuple[str, str]]:
    """README.md and the PNGs of OUTPUT from runs.csv's rows; returns each finding's (axis, verdict)."""
    rows = [r for r in rows if r['protocol'] == protocol]
    stats = model_stats(rows)
    plots = {}
    for f in FINDINGS:
        name = f'{f.axis}.png'
        if plot_axis(f.axis, rows, stats, os.path.join(out, name)):
            plots[f.axis] = name
    findings, verdicts = findings_section(stats, plots)
    train_minutes = sum(float(r['train_minutes']) for r in rows)
    wall = sum(float(r['wall_minutes'] or r['train_minutes']) for r in rows)
    speed = throughput(rows)
    machines = sorted({str(r['machine']) for r in rows})
    counts = f'{data.train_per_class} per class' if data.train_per_class else 'all'
    with open(recipe) as fh:
        recipe_text = fh.read()
    pilot = ('The pilot (seed spread against the differences looked for, before the full run) and what it decided: '
             '[pilot-one-epoch.md](pilot-one-epoch.md).' if os.path.isfile(os.path.join(out, 'pilot-one-epoch.md'))
             else '')
    status = (f'{len(rows)} of {expected} runs done' + ('' if len(rows) >= expected else
              ' (the study is in progress: `make study` continues it; rows below are the runs finished so far)'))
    text = f'''# The ablation on Fashion-MNIST{" (--quick)" if quick else ""}

Written by `python train/study.py` (`make study`); do not edit by hand. {status}.
Protocol `{protocol}`; runs.csv holds one row per model and seed.

## Verdicts

{chr(10).join(f"- {axis}: **{v}**" for axis, v in verdicts)}

## Protocol

- **Data**: Fashion-MNIST (70,000 28x28 grey product photos, 10 classes, MIT licence) from Debian's
  `dataset-fashion-mnist`, written by `train/fashion_mnist.py`: {data.val_per_class} images per class of the
  official train set held out as validation (seed {data.seed}), {counts} of the remaining train images for
  training; top-1 and top-5 are on the official 10,000-image test set, evaluated once per run with its final
  weights. The validation split selected nothing: it was only looked at for the pilot (the seed spread).
- **Scale-down** from the paper's ResNet-50 on 224 px ImageNet: ResNet-26 (2, 2, 2, 2 blocks) at a quarter of
  the width (stage widths 16/32/64/128, ~0.5 M parameters), 1 input channel, the small-input stem (3x3 stride 1,
  no max-pool: `small_stem=True`), so the mixers see 28/14/7/4 maps as ResNet-50's see 56/28/14/7 at 224 px, and
  k = 3..13 spans local to global again; one epoch of {len(rows) and rows[0]["train_images"] or "?"} images instead of
  100-300 epochs of 1.28 M.
- **Recipe** (`train/configs/fashion_mnist.yaml`, every run the same, seeds {", ".join(str(s) for s in sorted({int(r["seed"]) for r in rows}))}):

```yaml
{recipe_text.strip()}
```

- **Machine**: {"; ".join(machines) or "-"}. Training time of the runs (every epoch, over every sitting):
  {train_minutes:.0f} min; wall time of the train.py processes the study started, start-up and the test
  evaluation included: {wall:.0f} min (a resumed run counts its last sitting, a run rebuilt from its folder its
  training time).{speed and f" Throughput of the study's runs trained in one sitting: {speed[0]:.0f} training images/s in "
  f"all ({speed[1]:,} images in {speed[2]:.0f} min of the machine; runs side by side share it)."}

{pilot}

## Verdict rule (fixed before the runs)

A claim compares models by a contrast of their mean test top-1 over seeds, sum_i c_i mean_i, with standard
error SE = sqrt(sum_i c_i^2 s_i^2 / n_i) (s_i: the sample standard deviation over the n_i seeds). "A better
than B" is the contrast A - B with margin m = 0; "A no worse than B" the same contrast with margin
m = {MARGIN} percentage points. A claim is **reproduced** when contrast - {SE_FACTOR:g} SE > -m, **contradicted**
when contrast + {SE_FACTOR:g} SE < -m, and **inconclusive** otherwise; a finding is reproduced when all its claims
are, contradicted when any is. With three seeds, two standard errors is a screening rule, not a 95 % test.
The claims are our reading of the abstract (the paper's full text is not available to the project).

## Results (test top-1, %)

Spatial variation and context sensitivity are `timm_cada.analysis`' figures of the trained model (mean over its
mixers, then over seeds; docs/design.md defines them), on the first {BIAS_IMAGES_PER_CLASS} test images of each class.

{results_table(rows, stats) if rows else "No run has finished yet."}

## Findings

{findings}'''
    with open(os.path.join(out, 'README.md'), 'w') as fh:
        fh.write(text)
    return verdicts


def verdict_quote(verdicts: Sequence[Tuple[str, str]], done: int, expected: int) -> str:
    """The block README.md and MODEL_CARD.md show: each finding's verdict, and how much of the study ran."""
    from timm_cada.models import ABLATION_AXES
    state = f'complete: {done} runs' if done >= expected else f'in progress: {done} of {expected} runs'
    if any(verdict == 'pending' for _, verdict in verdicts):
        state += '; "pending": a claim still lacks the seeds of a model it compares, and none is contradicted'
    lines = [f'Fashion-MNIST study at CPU scale ([results/fashion_mnist/](results/fashion_mnist/README.md), '
             f'{state}):',
             '',
             '| finding (the abstract) | verdict |', '|---|---|']
    statements = {f.axis: f.statement for f in FINDINGS}
    lines += [f'| {ABLATION_AXES[axis].title}: {statements[axis]} | {verdict} |' for axis, verdict in verdicts]
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
