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
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fashion_mnist  # noqa: E402  (train/fashion_mnist.py, the data step)

TRAIN = os.path.join(REPO, 'train', 'train.py')
RECIPE = os.path.join(REPO, 'train', 'configs', 'fashion_mnist.yaml')

# The study: every row of the paper's ablation scaled to ResNet-26 (see FINDINGS), three seeds each.
MODELS = (
    'resnet26_dw_k3', 'resnet26_dw_k7', 'resnet26_dw_k13',
    'resnet26_cada_k3', 'resnet26_cada_k7', 'resnet26_cada_k13',
    'resnet26_position_k7', 'resnet26_cada_k7_ca3', 'resnet26_cada_k7_ca7',
    'resnet26_cada_k7_b2', 'resnet26_cada_k7_b16', 'resnet26_cada_k7_free', 'resnet26_local_k7',
    'resnet26_cada_k7_rpe', 'resnet26_cada_k7_dsconv3', 'resnet26_cada_k7_dsdw3',
)
SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The ImageFolder the runs train on (train/fashion_mnist.py's parameters)."""
    train_per_class: Optional[int]
    val_per_class: int
    seed: int = 0


DATA = DataSpec(train_per_class=4000, val_per_class=1000)
# --quick: the same recipe on 100 training images per class, for the test suite and a first look
QUICK_MODELS, QUICK_SEEDS, QUICK_DATA = ('resnet26_dw_k7', 'resnet26_cada_k7'), (0,), DataSpec(100, 20)

# The verdict rule, fixed before any number was seen: a claim is a contrast sum_i c_i * mean_i of the models'
# mean test top-1 over seeds, with standard error SE = sqrt(sum_i c_i^2 * s_i^2 / n_i) (s_i the sample standard
# deviation over n_i seeds), and a margin m (0 for "better than", MARGIN for "no worse than"). It is
# reproduced when contrast - 2 SE > -m, contradicted when contrast + 2 SE < -m, and inconclusive otherwise.
# A finding is reproduced when all its claims are, contradicted when any claim is, inconclusive otherwise.
MARGIN = 0.5  # percentage points of top-1: a smaller loss counts as "no worse"
SE_FACTOR = 2.0
VERDICTS = ('reproduced', 'contradicted', 'inconclusive')


@dataclasses.dataclass(frozen=True)
class Claim:
    """One comparison: `weights` (model -> c_i) is expected > -margin."""
    text: str
    weights: Mapping[str, float]
    margin: float = 0.0


@dataclasses.dataclass(frozen=True)
class Finding:
    axis: str  # a key of timm_cada.ABLATION_AXES
    statement: str  # the abstract's words
    claims: Tuple[Claim, ...]


def _better(a: str, b: str) -> Dict[str, float]:
    return {f'resnet26_{a}': 1.0, f'resnet26_{b}': -1.0}


def _saturates(mixer: str) -> Claim:
    """The gain from k=7 to k=13 is smaller than the gain from k=3 to k=7 (a concave curve in k)."""
    k3, k7, k13 = (f'resnet26_{mixer}_k{k}' for k in (3, 7, 13))
    return Claim(f'{mixer}: gain k3->k7 exceeds gain k7->k13', {k7: 2.0, k3: -1.0, k13: -1.0})


FINDINGS: Tuple[Finding, ...] = (
    Finding('locality', 'DW accuracy saturates with larger kernels; CADA follows this characteristic of locality',
            (_saturates('dw'), _saturates('cada'))),
    Finding('context_awareness', 'context awareness is the crucial property',
            (Claim('cada_k7 > position_k7 (alpha from the input vs from the position only)',
                   _better('cada_k7', 'position_k7')),
             Claim('cada_k7 > dw_k7 (context-aware vs one kernel everywhere)', _better('cada_k7', 'dw_k7')))),
    Finding('ca_context', 'large local information is not necessary to construct the CA parameters',
            (Claim('cada_k7 (pixel alone) no worse than cada_k7_ca3', _better('cada_k7', 'cada_k7_ca3'), MARGIN),
             Claim('cada_k7 (pixel alone) no worse than cada_k7_ca7', _better('cada_k7', 'cada_k7_ca7'), MARGIN))),
    Finding('spatial_invariance', 'no spatial invariance makes training difficult; relaxed spatial invariance '
            'gives better accuracy than strict',
            (Claim('cada_k7 (8 bases) > dw_k7 (strict)', _better('cada_k7', 'dw_k7')),
             Claim('cada_k7 (8 bases) > cada_k7_free (none)', _better('cada_k7', 'cada_k7_free')),
             Claim('dw_k7 (strict) > local_k7 (none, locally connected)', _better('dw_k7', 'local_k7')))),
    Finding('rel_pos', 'additional strong spatial invariance through relative position encoding is preferable',
            (Claim('cada_k7_rpe > cada_k7', _better('cada_k7_rpe', 'cada_k7')),)),
    Finding('downsampling', 'locality bias is more critical for downsampling, but relaxed spatial invariance can '
            'remove the strong locality bias',
            (Claim('cada_k7 (CADA 7x7 downsampling) no worse than cada_k7_dsdw3 (DW 3x3)',
                   _better('cada_k7', 'cada_k7_dsdw3'), MARGIN),
             Claim('cada_k7 (CADA 7x7 downsampling) no worse than cada_k7_dsconv3 (dense 3x3)',
                   _better('cada_k7', 'cada_k7_dsconv3'), MARGIN))),
)

# README.md and MODEL_CARD.md quote the verdicts between these markers; a study into the default --output
# rewrites them (tests/test_study.py checks them against results/fashion_mnist/runs.csv).
QUOTE_START, QUOTE_END = '<!-- study-verdicts:start (python train/study.py) -->', '<!-- study-verdicts:end -->'
QUOTED_IN = (os.path.join(REPO, 'README.md'), os.path.join(REPO, 'MODEL_CARD.md'))
RESULTS = os.path.join(REPO, 'results', 'fashion_mnist')

COLUMNS = ('model', 'seed', 'top1', 'top5', 'val_top1', 'epochs', 'train_images', 'params_M', 'MMACs',
           'train_minutes', 'wall_minutes', 'spatial_variation', 'context_sensitivity', 'machine', 'protocol')
# timm_cada.analysis' two figures of a trained model, on the first images (by file name) of each test class
BIAS_IMAGES_PER_CLASS = 2
ROW_KEY = ('model', 'seed', 'protocol')  # a run's identity in runs.csv
# train.py options the study sets for each run itself: not accepted after `--`
STUDY_SETS = ('-c', '--config', '--model', '--seed', '--data-dir', '--data', '--output', '--resume', '--test-split')


# ------------------------------------------------------------------------------------------- statistics

@dataclasses.dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    std: float  # sample standard deviation (0 for one seed)


def model_stats(rows: Sequence[Mapping[str, object]]) -> Dict[str, Stats]:
    """Test top-1 per model over its seeds."""
    by_model: Dict[str, List[float]] = {}
    for r in rows:
        by_model.setdefault(str(r['model']), []).append(float(r['top1']))
    out = {}
    for model, values in by_model.items():
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out[model] = Stats(len(values), mean, math.sqrt(var))
    return out


@dataclasses.dataclass(frozen=True)
class Judged:
    claim: Claim
    value: Optional[float]  # the contrast; None when a model has fewer than two seeds
    se: Optional[float]
    verdict: str  # one of VERDICTS, or 'pending'


def judge(claim: Claim, stats: Mapping[str, Stats]) -> Judged:
    """The verdict rule (see VERDICTS' comment) on one claim."""
    if any(m not in stats or stats[m].n < 2 for m in claim.weights):
        return Judged(claim, None, None, 'pending')
    value = sum(c * stats[m].mean for m, c in claim.weights.items())
    se = math.sqrt(sum(c * c * stats[m].std ** 2 / stats[m].n for m, c in claim.weights.items()))
    if value - SE_FACTOR * se > -claim.margin:
        verdict = 'reproduced'
    elif value + SE_FACTOR * se < -claim.margin:
        verdict = 'contradicted'
    else:
        verdict = 'inconclusive'
    return Judged(claim, value, se, verdict)


def finding_verdict(judged: Sequence[Judged]) -> str:
    verdicts = [j.verdict for j in judged]
    if 'contradicted' in verdicts:
        return 'contradicted'
    if 'pending' in verdicts:
        return 'pending'
    return 'reproduced' if all(v == 'reproduced' for v in verdicts) else 'inconclusive'


# ------------------------------------------------------------------------------------------------ runs

def protocol_id(recipe: str, data: DataSpec, extra: Sequence[str]) -> str:
    """A short hash of what decides a run's result besides model and seed: the recipe's text, the data, the
    extra train.py options."""
    with open(recipe, 'rb') as f:
        text = f.read().decode()
    blob = json.dumps(dict(recipe=text, data=dataclasses.asdict(data), extra=list(extra)), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def machine() -> str:
    """The machine the runs were timed on, e.g. 'AMD EPYC 7B13, 2 CPUs, no GPU'."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
    except OSError:
        pass
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{name}, {len(os.sched_getaffinity(0))} CPUs, {gpu}'


def read_rows(path: str) -> List[Dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def write_rows(path: str, rows: Sequence[Mapping[str, object]]) -> None:
    """runs.csv, sorted by the study's model order then seed, replaced atomically."""
    order = {m: i for i, m in enumerate(MODELS)}
    rows = sorted(rows, key=lambda r: (order.get(str(r['model']), len(order)), str(r['model']), int(r['seed'])))
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{c: r.get(c, '') for c in COLUMNS} for r in rows])
    os.replace(tmp, path)


def finished_results(run_dir: str) -> Optional[Dict[str, object]]:
    """results.json of a run that completed its schedule and was tested, else None."""
    path = os.path.join(run_dir, 'results.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        results = json.load(f)
    if results['epochs'] < results['num_epochs'] or 'test_top1' not in results:
        return None
    return results


def describe_run(model: str, seed: int, run_dir: str, results: Mapping[str, object], train_images: int,
                 wall_minutes: Optional[float], protocol: str, where: str) -> Dict[str, object]:
    """The runs.csv row of a finished run: test accuracy, size and MACs of the trained model, its time."""
    import timm
    from timm_cada.checkpoint import read_checkpoint
    from timm_cada.profile import count_macs, count_params
    net = timm.create_model(model, **results['model_kwargs'])
    run_args = read_checkpoint(os.path.join(run_dir, 'last.pth.tar'))['args']
    input_size = timm.data.resolve_data_config(run_args, model=net)['input_size']
    return {
        'model': model, 'seed': seed, 'top1': round(results['test_top1'], 2), 'top5': round(results['test_top5'], 2),
        'val_top1': round(results['top1'], 2), 'epochs': results['epochs'], 'train_images': train_images,
        'params_M': round(count_params(net) / 1e6, 4), 'MMACs': round(count_macs(net, tuple(input_size)) / 1e6, 2),
        'train_minutes': round(results['train_minutes'], 2),
        'wall_minutes': round(wall_minutes, 2) if wall_minutes is not None else '',
        'machine': where, 'protocol': protocol,
    }


def bias_figures(model: str, run_dir: str, data_dir: str) -> Dict[str, float]:
    """spatial_variation and context_sensitivity (timm_cada.analysis) of the run's final weights."""
    from timm_cada import analysis
    from timm_cada.train_utils import load_model
    test = os.path.join(data_dir, 'test')
    paths = [os.path.join(test, c, f) for c in sorted(os.listdir(test))
             for f in sorted(os.listdir(os.path.join(test, c)))[:BIAS_IMAGES_PER_CLASS]]
    net, data_args = load_model(model, os.path.join(run_dir, 'last.pth.tar'))
    images, _ = analysis.load_images(paths, net, data_args)
    metrics = analysis.model_metrics(analysis.capture_kernels(net, images), len(images))
    return {k: '' if metrics[k] is None else float(f'{metrics[k]:.4g}')  # 4 digits
            for k in ('spatial_variation', 'context_sensitivity')}


def train_command(model: str, seed: int, run_dir: str, data_dir: str, recipe: str, extra: Sequence[str]) -> List[str]:
    cmd = [sys.executable, TRAIN, '-c', recipe, '--model', model, '--seed', str(seed), '--data-dir', data_dir,
           '--output', run_dir, '--test-split', 'test']
    last = os.path.join(run_dir, 'last.pth.tar')
    if os.path.isfile(last):
        cmd += ['--resume', last]
    return cmd + list(extra)


# --------------------------------------------------------------------------------------------- reports

def axis_models(axis: str, models: Sequence[str]) -> List[str]:
    """The study's models of one ablation axis: the axis' references then its own variants, as run."""
    from timm_cada.models import ablation_models
    wanted = ablation_models(axis, depth=26)
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
            names = [f'resnet26_{mixer}_k{k}' for k in ks]
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
        labels = [m[len('resnet26_'):] + ('\n' + textwrap.fill(VARIANTS[m].setting, 18) if VARIANTS[m].axis == axis
                                         else '') for m in models]
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_xlabel(info.knob)
    ax.set_ylabel('test top-1 (%)')
    ax.set_title(f'{info.title} (Fashion-MNIST, ResNet-26/4, mean ± std over seeds)', fontsize=10)
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


def judge_findings(stats: Mapping[str, Stats]) -> List[Tuple[Finding, List[Judged], str]]:
    """Every finding with its judged claims and its verdict."""
    out = []
    for f in FINDINGS:
        judged = [judge(c, stats) for c in f.claims]
        out.append((f, judged, finding_verdict(judged)))
    return out


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
    machines = sorted({str(r['machine']) for r in rows})
    counts = f'{data.train_per_class} per class' if data.train_per_class else 'all'
    with open(recipe) as fh:
        recipe_text = fh.read()
    pilot = ('The pilot (seed spread against the differences looked for, before the full run) and what it decided: '
             '[pilot.md](pilot.md).' if os.path.isfile(os.path.join(out, 'pilot.md')) else '')
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
  training time).

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


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument('--max-runs', type=int, default=None, help='stop after training this many runs')
    args = parser.parse_args(argv)
    import timm_cada  # noqa: F401  (registers the models)
    from timm_cada.train_utils import check_model_name
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.seeds = args.seeds if args.seeds is not None else list(QUICK_SEEDS if args.quick else SEEDS)
    try:
        for m in args.models:
            check_model_name(m, '--models')
    except ValueError as e:
        parser.error(str(e))
    if len(set(args.models)) != len(args.models) or len(set(args.seeds)) != len(args.seeds):
        parser.error('--models and --seeds must not repeat a value')
    taken = [a for a in extra if a.split('=')[0] in STUDY_SETS]
    if taken:
        parser.error(f'options after -- must not set what the study sets for each run ({", ".join(taken)}); '
                     f'use --models, --seeds, --data-dir, --output')
    if args.max_runs is not None and args.max_runs < 0:
        parser.error(f'--max-runs must be >= 0, got {args.max_runs}')
    args.output = args.output or (os.path.join('output', 'study-quick') if args.quick else RESULTS)
    args.data_dir = args.data_dir or os.path.join('.cache', 'fashion_mnist-quick' if args.quick else 'fashion_mnist')
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f'--output: {args.output} is a file')
    return args, extra


def main(argv: Optional[List[str]] = None) -> List[Tuple[str, str]]:
    args, extra = parse_args(argv)
    data = QUICK_DATA if args.quick else DATA
    try:
        counts = fashion_mnist.write_fashion_mnist(args.data_dir, args.source, data.val_per_class, data.seed,
                                                   train_per_class=data.train_per_class)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'study.py: error: {e}')
    os.makedirs(args.output, exist_ok=True)
    protocol = protocol_id(RECIPE, data, extra)
    runs_csv = os.path.join(args.output, 'runs.csv')
    rows = read_rows(runs_csv)
    done = {(r['model'], int(r['seed'])) for r in rows if r['protocol'] == protocol}
    where = machine()
    todo = [(m, s) for m in args.models for s in args.seeds]
    full_study = os.path.abspath(args.output) == RESULTS and not args.quick and not extra  # the committed one
    expected = len(MODELS) * len(SEEDS) if full_study else len(todo)

    def report() -> List[Tuple[str, str]]:
        """README.md and the plots from runs.csv; for the study itself, the verdicts quoted in the docs too."""
        rows = read_rows(runs_csv)
        verdicts = write_report(args.output, rows, expected, protocol, data, RECIPE, args.quick)
        if full_study:
            update_quotes(verdict_quote(verdicts, sum(r['protocol'] == protocol for r in rows), expected))
        return verdicts

    print(f'Study {protocol}: {len(todo)} runs, {len(done & set(todo))} already in {runs_csv}', flush=True)
    # rows written before runs.csv had the analysis figures get them from their run folder, where it is here
    for r in rows:
        run_dir = os.path.join(args.work, protocol, f'{r["model"]}-s{r["seed"]}')
        if r['protocol'] == protocol and not r.get('spatial_variation') and finished_results(run_dir):
            r.update(bias_figures(r['model'], run_dir, args.data_dir))
            write_rows(runs_csv, rows)
    trained = 0
    for model, seed in todo:
        if (model, seed) in done:
            continue
        run_dir = os.path.join(args.work, protocol, f'{model}-s{seed}')
        results, wall = finished_results(run_dir), None
        if results is None:
            if args.max_runs is not None and trained >= args.max_runs:
                continue
            cmd = train_command(model, seed, run_dir, args.data_dir, RECIPE, extra)
            print(f'==> {model} seed {seed}: {" ".join(cmd)}', flush=True)
            tic = time.time()
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                sys.exit(f'study.py: error: {model} seed {seed} failed (exit {proc.returncode}, its log above); '
                         f'{run_dir} keeps its finished epochs, and the next study.py resumes it')
            wall, trained = (time.time() - tic) / 60, trained + 1
            results = finished_results(run_dir)
            if results is None:
                sys.exit(f'study.py: error: {run_dir} did not finish its schedule (see its log above)')
        else:
            print(f'==> {model} seed {seed}: finished run in {run_dir} reused', flush=True)
        row = describe_run(model, seed, run_dir, results, counts['train'], wall, protocol, where)
        row.update(bias_figures(model, run_dir, args.data_dir))
        key = tuple(str(row[c]) for c in ROW_KEY)
        rows = [r for r in rows if tuple(str(r[c]) for c in ROW_KEY) != key] + [row]
        write_rows(runs_csv, rows)
        report()
        print(f'    test top-1 {row["top1"]:.2f}  ({row["train_minutes"]} min training)', flush=True)
    verdicts = report()
    print(f'Wrote {runs_csv}, {os.path.join(args.output, "README.md")} and the plots'
          + ('; the verdicts quoted in README.md and MODEL_CARD.md' if full_study else ''))
    for axis, verdict in verdicts:
        print(f'  {axis}: {verdict}')
    return verdicts


if __name__ == '__main__':
    main()
