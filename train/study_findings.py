""" The study's design, fixed before any number was seen: its models, seeds and data, the abstract's findings as
claims about them, and the verdict rule with the statistics it reads (mean and sample standard deviation of test
top-1 over seeds). train/study.py runs the study, train/study_report.py writes what this module judges. """
import dataclasses
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# The study: every row of the paper's ablation scaled to ResNet-26 (see FINDINGS), three seeds each.
DEPTH = 26  # ResNet-26: (2, 2, 2, 2) blocks


def model_name(variant: str) -> str:
    """The study's model of a variant, e.g. 'cada_k7' -> 'resnet26_cada_k7'."""
    return f'resnet{DEPTH}_{variant}'


MODELS = tuple(model_name(v) for v in (
    'dw_k3', 'dw_k7', 'dw_k13',
    'cada_k3', 'cada_k7', 'cada_k13',
    'position_k7', 'cada_k7_ca3', 'cada_k7_ca7',
    'cada_k7_b2', 'cada_k7_b16', 'cada_k7_free', 'local_k7',
    'cada_k7_rpe', 'cada_k7_dsconv3', 'cada_k7_dsdw3',
))
SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The ImageFolder the runs train on (train/fashion_mnist.py's parameters)."""
    train_per_class: Optional[int]
    val_per_class: int
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A training budget of the study: the data its runs train on and the train.py options it adds to the recipe
    (train/configs/fashion_mnist.yaml); its runs are named by a hash of the three (train/study.py)."""
    name: str
    data: DataSpec
    options: Tuple[str, ...] = ()
    ships_weights: bool = False  # its seed-0 models are saved for timm's local-dir: (OUTPUT/weights/MODEL)


DATA = DataSpec(train_per_class=4000, val_per_class=1000)
# The short budget: one epoch of 4,000 images per class, the recipe as it is.
ONE_EPOCH = Protocol('one-epoch', DATA)
# The converged protocol trains every model on the whole training split (all but the validation images), in its
# fastest layout: the train.py options it adds to the recipe, besides the number of epochs that its pilot
# (train/pilot.py) chooses.
CONVERGED_DATA = DataSpec(train_per_class=None, val_per_class=1000)
CONVERGED_OPTIONS = ('--channels-last',)


def converged(epochs: int) -> Protocol:
    """The converged protocol at the pilot's schedule of `epochs` epochs."""
    return Protocol('converged', CONVERGED_DATA, (*CONVERGED_OPTIONS, '--epochs', str(epochs)), ships_weights=True)


# The pilot, on the validation split only: validation top-1 against the schedule's length (each its own cosine
# schedule), for a model of each kind (strict, relaxed and no spatial invariance), two seeds. The converged
# schedule is the shortest whose doubling moves every pilot model's mean validation top-1 by less than
# PILOT_TOLERANCE points or by less than the larger seed standard deviation of the two schedules, among those
# whose converged protocol fits BUDGET_HOURS; when none of those settles, the longest that fits, not settled.
PILOT_MODELS = tuple(model_name(v) for v in ('dw_k7', 'cada_k7', 'local_k7'))
PILOT_SEEDS = (0, 1)
PILOT_EPOCHS = (1, 2, 4, 8, 16)
PILOT_TOLERANCE = 0.3
BUDGET_HOURS = 20  # the converged protocol's runs (MODELS x SEEDS, and EXTRA_SEEDS), on the 2-core machine
# More seeds where they can still decide a claim: once every model has its SEEDS in the converged protocol, each
# round gives the next of EXTRA_SEEDS to every model of a claim still inconclusive, if the whole round fits in
# what is left of BUDGET_HOURS at each of its models' mean machine time per run so far.
EXTRA_SEEDS = (3, 4, 5)
# --quick: the same recipe on 100 training images per class, for the test suite and a first look
QUICK_MODELS, QUICK_SEEDS, QUICK_DATA = (model_name('dw_k7'), model_name('cada_k7')), (0,), DataSpec(100, 20)
QUICK = Protocol('quick', QUICK_DATA, ships_weights=True)
# timm_cada.analysis' two figures of a trained model, on the first images (by file name) of each test class
BIAS_IMAGES_PER_CLASS = 2


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
    return {model_name(a): 1.0, model_name(b): -1.0}


def _saturates(mixer: str) -> Claim:
    """The gain from k=7 to k=13 is smaller than the gain from k=3 to k=7 (a concave curve in k)."""
    k3, k7, k13 = (model_name(f'{mixer}_k{k}') for k in (3, 7, 13))
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

@dataclasses.dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    std: float  # sample standard deviation (0 for one seed)


def model_stats(rows: Sequence[Mapping[str, object]], metric: str = 'top1') -> Dict[str, Stats]:
    """Test top-1 (or another column, `metric`) per model over its seeds."""
    by_model: Dict[str, List[float]] = {}
    for r in rows:
        by_model.setdefault(str(r['model']), []).append(float(r[metric]))
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


def judge_findings(stats: Mapping[str, Stats]) -> List[Tuple[Finding, List[Judged], str]]:
    """Every finding with its judged claims and its verdict."""
    out = []
    for f in FINDINGS:
        judged = [judge(c, stats) for c in f.claims]
        out.append((f, judged, finding_verdict(judged)))
    return out


def undecided_models(stats: Mapping[str, Stats]) -> List[str]:
    """The models (in MODELS order) of the claims whose verdict is inconclusive."""
    involved = {m for f in FINDINGS for c in f.claims if judge(c, stats).verdict == 'inconclusive' for m in c.weights}
    return [m for m in MODELS if m in involved]


def seed_round(rows: Sequence[Mapping[str, object]],
               machine_hours: Callable[[Sequence[Mapping[str, object]]], float]) -> List[Tuple[str, int]]:
    """The next round of extra seeds (see EXTRA_SEEDS) for the converged protocol's `rows`: (model, seed) for
    every model of an inconclusive claim that has a seed of EXTRA_SEEDS left; [] while a model lacks one of its
    SEEDS, when no claim is inconclusive, or when the round does not fit the budget (`machine_hours` of rows: the
    hours of the machine they took)."""
    by_model = {m: [r for r in rows if r['model'] == m] for m in MODELS}
    if any(not set(SEEDS) <= {int(r['seed']) for r in by_model[m]} for m in MODELS):
        return []
    todo = []
    for model in undecided_models(model_stats(rows)):
        left = [s for s in EXTRA_SEEDS if s not in {int(r['seed']) for r in by_model[model]}]
        if left:
            todo.append((model, left[0]))
    need = sum(machine_hours(by_model[m]) / len(by_model[m]) for m, _ in todo)
    return todo if machine_hours(rows) + need <= BUDGET_HOURS else []


def pilot_stats(rows: Sequence[Mapping[str, object]]) -> Dict[Tuple[str, int], Stats]:
    """Validation top-1 over seeds per (model, epochs) of the pilot's rows."""
    out = {}
    for epochs in sorted({int(r['epochs']) for r in rows}):
        for model, stats in model_stats([r for r in rows if int(r['epochs']) == epochs], 'val_top1').items():
            out[model, epochs] = stats
    return out


def settles(stats: Mapping[Tuple[str, int], Stats], epochs: int) -> Optional[bool]:
    """Whether doubling `epochs` moved every pilot model's mean validation top-1 by less than PILOT_TOLERANCE or
    the seed spread; None while either schedule lacks a pilot run or the pilot has no schedule twice as long."""
    if 2 * epochs not in PILOT_EPOCHS or not all(complete(stats, e) for e in (epochs, 2 * epochs)):
        return None
    pairs = [(stats[m, epochs], stats[m, 2 * epochs]) for m in PILOT_MODELS]
    return all(abs(b.mean - a.mean) < max(PILOT_TOLERANCE, a.std, b.std) for a, b in pairs)


def complete(stats: Mapping[Tuple[str, int], Stats], epochs: int) -> bool:
    """Whether every pilot model has all its seeds at `epochs`."""
    return all(stats.get((m, epochs)) is not None and stats[m, epochs].n >= len(PILOT_SEEDS) for m in PILOT_MODELS)


def converged_hours(epochs: int, train_images: int, images_per_s: float) -> float:
    """The machine hours of the converged protocol's runs (MODELS x SEEDS) at `epochs` epochs of `train_images`."""
    return len(MODELS) * len(SEEDS) * epochs * train_images / images_per_s / 3600


def converged_epochs(stats: Mapping[Tuple[str, int], Stats],
                     fits: Callable[[int], bool] = lambda epochs: True) -> Optional[int]:
    """The converged schedule by the pilot's rule (see PILOT_TOLERANCE), from validation top-1 per (model,
    epochs): the shortest schedule that `fits` the budget and whose doubling settles; when no doubling of those
    settled, the longest that fits (`settles` then says it did not, or could not be told). None while the
    schedules the rule needs lack runs, or when not even the shortest fits."""
    chosen = None
    for epochs in PILOT_EPOCHS:
        if not fits(epochs):
            return chosen
        if not complete(stats, epochs):
            return None
        settled = settles(stats, epochs)
        if settled or 2 * epochs not in PILOT_EPOCHS:
            return epochs
        if settled is None:
            return None
        chosen = epochs
    return chosen
