""" train/study.py: the verdict rule and the aggregation on synthetic runs.csv rows, the report and its plots,
--quick end to end on small synthetic idx files, and the reuse of finished runs (from runs.csv and from run
folders) and of interrupted ones. """
import csv
import json
import math
import os
import shutil

import pytest
from PIL import Image

import runs  # train/ (pytest's pythonpath)
import study_findings as findings
import study_report as report
from helpers import fake_fashion_mnist, load_script

study = load_script('train/study.py')
pilot = load_script('train/pilot.py')
figures = load_script('train/readme_figures.py')


def rows_for(means, spread=0.1, seeds=(0, 1, 2), protocol='p'):
    """runs.csv rows: model -> mean top-1; the seeds at mean - spread, mean, mean + spread (std = spread)."""
    rows = []
    for model, mean in means.items():
        for seed, offset in zip(seeds, (-spread, 0.0, spread)):
            rows.append(dict(model=model, seed=str(seed), top1=str(mean + offset), top5='99', val_top1='0',
                             epochs='1', train_images='40000', params_M='0.5', MMACs='30', train_minutes='4',
                             wall_minutes='4.5', machine='test machine', protocol=protocol))
    return rows


def test_stats_are_mean_and_sample_std():
    stats = findings.model_stats(rows_for({'a': 90.0}, spread=0.3))
    assert stats['a'].n == 3 and stats['a'].mean == pytest.approx(90.0) and stats['a'].std == pytest.approx(0.3)
    assert findings.model_stats(rows_for({'a': 90.0}, seeds=(0,)))['a'] == findings.Stats(1, 89.9, 0.0)


@pytest.mark.parametrize('diff,margin,verdict', [
    (0.5, 0.0, 'reproduced'),      # SE = sqrt(2 * 0.1^2 / 3) = 0.0816: 0.5 - 0.163 > 0
    (0.1, 0.0, 'inconclusive'),    # within two standard errors of 0
    (-0.5, 0.0, 'contradicted'),
    (-0.2, 0.5, 'reproduced'),     # no worse than B by the margin: -0.2 - 0.163 > -0.5
    (-0.4, 0.5, 'inconclusive'),
    (-0.8, 0.5, 'contradicted'),   # -0.8 + 0.163 < -0.5
])
def test_verdict_rule(diff, margin, verdict):
    stats = findings.model_stats(rows_for({'a': 90.0 + diff, 'b': 90.0}))
    judged = findings.judge(findings.Claim('a vs b', {'a': 1.0, 'b': -1.0}, margin), stats)
    se = math.sqrt(2 * 0.1 ** 2 / 3)
    assert judged.value == pytest.approx(diff) and judged.se == pytest.approx(se)
    assert judged.verdict == verdict


def test_saturation_is_a_second_difference():
    claim = findings._saturates('dw')
    assert dict(claim.weights) == {'resnet26_dw_k7': 2.0, 'resnet26_dw_k3': -1.0, 'resnet26_dw_k13': -1.0}
    rising = findings.model_stats(rows_for({'resnet26_dw_k3': 88, 'resnet26_dw_k7': 90, 'resnet26_dw_k13': 90.2}))
    linear = findings.model_stats(rows_for({'resnet26_dw_k3': 88, 'resnet26_dw_k7': 89, 'resnet26_dw_k13': 90}))
    assert findings.judge(claim, rising).verdict == 'reproduced'
    assert findings.judge(claim, linear).verdict == 'inconclusive'


def test_missing_models_or_single_seeds_are_pending_and_findings_combine():
    claim = findings.Claim('a vs b', {'a': 1.0, 'b': -1.0})
    assert findings.judge(claim, findings.model_stats(rows_for({'a': 91}))).verdict == 'pending'
    assert findings.judge(claim, findings.model_stats(rows_for({'a': 91, 'b': 90}, seeds=(0,)))).verdict == 'pending'
    j = lambda v: findings.Judged(claim, 0.0, 0.0, v)
    assert findings.finding_verdict([j('reproduced'), j('reproduced')]) == 'reproduced'
    assert findings.finding_verdict([j('reproduced'), j('inconclusive')]) == 'inconclusive'
    assert findings.finding_verdict([j('reproduced'), j('contradicted')]) == 'contradicted'
    assert findings.finding_verdict([j('reproduced'), j('pending')]) == 'pending'


def test_every_finding_is_an_axis_and_names_study_models():
    from timm_cada.models import ABLATION_AXES
    assert [f.axis for f in findings.FINDINGS] == list(ABLATION_AXES)
    assert len(findings.MODELS) >= 15 and len(set(findings.MODELS)) == len(findings.MODELS)
    for f in findings.FINDINGS:
        for claim in f.claims:
            assert set(claim.weights) <= set(findings.MODELS), claim.text
            assert sum(claim.weights.values()) == 0, claim.text  # a contrast: a shift of every model cancels


SYNTHETIC_MEANS = {m: 90.0 for m in findings.MODELS}
SYNTHETIC_MEANS.update({'resnet26_cada_k7': 91.0, 'resnet26_cada_k7_rpe': 92.0, 'resnet26_position_k7': 89.0,
                        'resnet26_dw_k3': 88.0, 'resnet26_cada_k3': 89.0, 'resnet26_cada_k13': 91.1,
                        'resnet26_local_k7': 80.0, 'resnet26_cada_k7_dsconv3': 93.0})


def test_report_from_a_synthetic_runs_csv(tmp_path):
    """Every model of the study at three seeds: the table, the six findings with the verdicts the rule gives,
    and two PNGs per axis."""
    rows = rows_for(SYNTHETIC_MEANS)
    study.write_rows(str(tmp_path / 'runs.csv'), rows)
    back = study.read_rows(str(tmp_path / 'runs.csv'))
    assert [r['model'] for r in back[::3]] == list(findings.MODELS)  # the study's order
    budget = report.Budget(findings.ONE_EPOCH, 'p')  # 16 models x 3 seeds, as rows
    verdicts = dict(report.write_report(str(tmp_path), back, [budget], study.RECIPE))
    assert verdicts == {'locality': ['reproduced'], 'context_awareness': ['reproduced'], 'ca_context': ['reproduced'],
                        'spatial_invariance': ['reproduced'], 'rel_pos': ['reproduced'], 'downsampling': ['contradicted']}
    text = (tmp_path / 'README.md').read_text()
    assert 'Runs done: one-epoch 48 of 48 runs.' in text and '| downsampling | **contradicted** |' in text
    assert '| resnet26_cada_k7_rpe | relative position encoding (on) | 0.5 | 30 | 92.00 ± 0.10 (3) | 4.0 |' in text
    assert 'contrast - 2 SE > -m' in text and '- **one-epoch** (`p`): 48 of 48 runs' in text
    for f in findings.FINDINGS:
        for name in (f'{f.axis}.png', f'{f.axis}-budgets.png'):
            with Image.open(tmp_path / name) as img:
                assert img.format == 'PNG' and img.size[0] > 400
            assert f']({name})' in text
    # another protocol's rows are left out of the report
    report.write_report(str(tmp_path), back + rows_for({'resnet26_dw_k7': 10.0}, protocol='q'), [budget], study.RECIPE)
    assert '| resnet26_dw_k7 | locality (k=7, DW) | 0.5 | 30 | 90.00 ± 0.10 (3) |' in (tmp_path / 'README.md').read_text()


def test_report_of_two_budgets(tmp_path):
    """The one-epoch and the converged budget side by side: verdicts and means at each, the claims judged at each,
    their contrasts plotted against the budget, and the converged budget's evidence of convergence."""
    short = rows_for(SYNTHETIC_MEANS, protocol='short')
    means = dict(SYNTHETIC_MEANS, resnet26_cada_k7_dsconv3=91.0, resnet26_local_k7=91.5)  # at convergence
    every = [dict(r, epochs='8', train_images='50000', runs_at_once='2') for r in rows_for(means, protocol='long')]
    long = every[:-3]  # the last model not run yet
    budgets = [report.Budget(findings.ONE_EPOCH, 'short'), report.Budget(findings.converged(8), 'long')]
    verdicts = dict(report.write_report(str(tmp_path), short + long, budgets, study.RECIPE,
                                        convergence='Convergence: the pilot chose 8 epochs.'))
    assert verdicts['spatial_invariance'] == ['reproduced', 'contradicted']  # local_k7 caught up
    assert verdicts['downsampling'] == ['contradicted', 'pending']  # cada_k7_dsdw3 is missing at 8 epochs
    text = (tmp_path / 'README.md').read_text()
    assert 'Runs done: one-epoch 48 of 48 runs; converged 45 of 48 runs (in progress' in text
    assert '| spatial_invariance | **reproduced** | **contradicted** |' in text
    # an axis plot shows the converged budget once it covers the axis, the budget before it until then
    assert text.count('(Test top-1 along the axis, converged.)') == 5
    assert '(Test top-1 along the axis, one-epoch.)' in text.split('### 6. downsampling')[1]
    extra = every + [dict(r, seed='3') for r in every[:18:3]]  # every run, and a fourth seed for six models
    report.write_report(str(tmp_path), short + extra, budgets, study.RECIPE)
    assert 'converged 54 runs, the 48 planned and 6 extra seeds for inconclusive claims.' in (
        tmp_path / 'README.md').read_text()
    assert '| resnet26_local_k7 | spatial invariance (none: locally connected, no context) | 0.5 | 30 | 80.00 ± 0.10 (3) | ' \
           '91.50 ± 0.10 (3) | 4.0 / 4.0 |' in text
    assert '- **converged** (`long`): 45 of 48 runs; every image' in text and '8 epoch(s) (400,000 training' in text
    assert '`--channels-last --epochs 8`' in text and 'Convergence: the pilot chose 8 epochs.' in text
    # 45 runs x 400,000 images in 45 x 4.5 / 2 machine-minutes: 2963 images/s
    assert 'Throughput of its runs with every sitting timed: 2963 training images/s' in text
    # 45 x 2.25 machine-minutes, and the missing model's 3 runs at the mean run's
    assert ('Machine time: 1.7 h so far of the 20 h budget; the 3 planned runs left take about 0.1 h more at each '
            'model\'s mean per run so far (the mean run\'s for a model not run yet): 1.8 h in all, within the budget.'
            ) in text
    assert 'Machine time' not in text.split('- **converged**')[0]  # the one-epoch budget has no budget of hours
    assert '| dw_k7 (strict) > local_k7 (none, locally connected) | converged | -1.50 | 0.08 | 0 | contradicted |' in text
    with Image.open(tmp_path / 'spatial_invariance-budgets.png') as img:
        assert img.format == 'PNG'
    quote = report.verdict_quote(verdicts.items(), [('one-epoch', 48, 48), ('converged', 45, 48)])
    assert 'one-epoch: complete, 48 runs; converged: 45 of 48 runs' in quote and '"pending"' in quote
    assert quote.splitlines()[2] == '| finding (the abstract) | one-epoch | converged |'


def test_converged_protocol_waits_for_the_pilot(tmp_path, monkeypatch, capsys):
    """--protocol converged needs the pilot's decision (pilot.csv of the results folder): without it the study
    stops and says what to run; with it, the protocol adds --epochs E to the converged options."""
    monkeypatch.setattr(study, 'RESULTS', str(tmp_path))
    with pytest.raises(SystemExit, match='its pilot has not chosen the schedule yet .*pilot.csv: 0 pilot runs done.*train/pilot.py'):
        study.main(['--protocol', 'converged', '--max-runs', '0'])
    rows = [dict(model=m, seed=str(s), epochs=str(e), val_top1=str(mean + 0.1 * s), val_top5='99',
                 train_images='50000', train_minutes='1', wall_minutes='1', runs_at_once='2', machine='m',
                 protocol=study.pilot_protocol_id())
            for m in findings.PILOT_MODELS for s in findings.PILOT_SEEDS
            for e, mean in zip(findings.PILOT_EPOCHS, (80, 85, 88, 88.2, 88.3))]
    extra = [dict(rows[0], model='resnet26_cada_k3', epochs='4'), dict(rows[0], seed='7', val_top1='10')]
    study.write_rows(str(tmp_path / 'pilot.csv'), rows + extra, pilot.COLUMNS, ('epochs', 'model', 'seed'))
    epochs, evidence = study.pilot_decision(str(tmp_path))  # runs beyond the pilot's design are not read
    assert epochs == 4 and 'chose 4 epochs' in evidence and 'resnet26_dw_k7 +0.20' in evidence
    assert findings.converged(4).options == (*findings.CONVERGED_OPTIONS, '--epochs', '4')
    # nothing settles; at 1 minute a run, 16 epochs fit the budget: the longest, said not settled
    unsettled = [dict(r, val_top1=str(80 + int(r['epochs']) / 2 + 0.1 * int(r['seed']))) for r in rows]
    study.write_rows(str(tmp_path / 'pilot.csv'), unsettled, pilot.COLUMNS, ('epochs', 'model', 'seed'))
    epochs, evidence = study.pilot_decision(str(tmp_path))
    assert epochs == 16 and 'NOT settled: going from 8 to 16 epochs still moved' in evidence
    assert 'resnet26_dw_k7 +4.00' in evidence
    slow = [dict(r, wall_minutes='90') for r in unsettled]  # 296 images/s: 16 epochs 36 h, 8 epochs 18 h
    study.write_rows(str(tmp_path / 'pilot.csv'), slow, pilot.COLUMNS, ('epochs', 'model', 'seed'))
    epochs, evidence = study.pilot_decision(str(tmp_path))
    assert epochs == 8 and 'going from 8 to 16 epochs still moved' in evidence


def test_bad_arguments_are_named(capsys):
    for argv, match in ((['--models', 'resnet26_cada_k99'], '--models'), (['--seeds', '0', '0'], 'must not repeat'),
                        (['--max-runs', '-1'], '--max-runs'),
                        (['--', '--seed', '3'], 'must not set what the study sets for each run (--seed)'),
                        (['--', '--output=x'], '(--output=x)')):
        with pytest.raises(SystemExit):
            study.parse_args(argv)
        assert match in capsys.readouterr().err


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    """`study.py --quick` on synthetic idx files (120 train and 10 test images per class)."""
    root = tmp_path_factory.mktemp('study')
    source = fake_fashion_mnist(root / 'source', 120, 10)
    argv = ['--quick', '--source', str(source), '--data-dir', str(root / 'data'), '--output', str(root / 'out'),
            '--work', str(root / 'work')]
    verdicts = study.main(argv)
    return root, argv, verdicts


def test_quick_runs_end_to_end(quick):
    root, _, verdicts = quick
    with open(root / 'out' / 'runs.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['model'], r['seed']) for r in rows] == [('resnet26_dw_k7', '0'), ('resnet26_cada_k7', '0')]
    for r in rows:
        assert 0 <= float(r['top1']) <= 100 and r['epochs'] == '1' and r['train_images'] == '1000'
        assert float(r['train_minutes']) > 0 and float(r['wall_minutes']) >= float(r['train_minutes'])
        assert 0.4 < float(r['params_M']) < 0.6 and 10 < float(r['MMACs']) < 100  # 28 px, not the cfg's 224
        results = json.loads((root / 'work' / r['protocol'] / f'{r["model"]}-s0' / 'results.json').read_text())
        assert results['test_top1'] == pytest.approx(float(r['top1']), abs=0.01)
        assert results['model_kwargs']['small_stem'] is True
    dw, cada = rows
    assert float(dw['spatial_variation']) == 0.0 and float(dw['context_sensitivity']) == 0.0  # strict, no context
    assert float(cada['spatial_variation']) > 0 and float(cada['context_sensitivity']) > 0
    assert all(v == ['pending'] for _, v in verdicts)  # one seed: no verdict
    text = (root / 'out' / 'README.md').read_text()
    assert 'Runs done: quick 2 of 2 runs.' in text and '(--quick)' in text and '20 images per class (seed 0) of the official' in text
    with Image.open(root / 'out' / 'locality.png') as img:
        assert img.format == 'PNG'


def evaluate_shipped(folder, test_dir):
    """Test top-1 of the model in `folder` as a timm user gets it: local-dir:, timm's data config from its
    config.json, timm's eval transform, every image of the ImageFolder `test_dir` (classes in sorted order)."""
    import timm
    import torch
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    mode = 'L' if config['input_size'][0] == 1 else 'RGB'
    correct = total = 0
    for label, name in enumerate(sorted(os.listdir(test_dir))):
        files = sorted(os.listdir(os.path.join(test_dir, name)))
        for i in range(0, len(files), 256):
            batch = []
            for f in files[i:i + 256]:
                with Image.open(os.path.join(test_dir, name, f)) as img:
                    batch.append(transform(img.convert(mode)))
            with torch.no_grad():
                correct += (model(torch.stack(batch)).argmax(1) == label).sum().item()
            total += len(batch)
    return config, 100 * correct / total


def test_shipped_weights_reproduce_the_test_top1(quick):
    """The seed-0 models of a protocol that ships weights load with local-dir: and timm's own data config (28 px,
    1 channel, the run's mean / std / crop) and reproduce their runs.csv test top-1."""
    root, _, _ = quick
    rows = study.read_rows(str(root / 'out' / 'runs.csv'))
    for r in rows:
        folder = root / 'out' / 'weights' / r['model']
        assert json.loads((folder / 'study.json').read_text())['protocol'] == r['protocol']
        config, top1 = evaluate_shipped(folder, str(root / 'data' / 'test'))
        assert tuple(config['input_size']) == (1, 28, 28) and tuple(config['mean']) == (0.286,) and config['crop_pct'] == 1.0
        assert top1 == pytest.approx(float(r['top1']), abs=0.005)


SHIPPED = sorted(os.listdir(os.path.join(study.RESULTS, 'weights'))) if os.path.isdir(
    os.path.join(study.RESULTS, 'weights')) else []


@pytest.mark.parametrize('model', SHIPPED[:1] + [m for m in SHIPPED if m == 'resnet26_cada_k7'][:1])
def test_committed_weights_reproduce_their_row_on_the_official_test_set(model, tmp_path):
    """A committed model of results/fashion_mnist/weights/ on Fashion-MNIST's official test set (Debian's
    package, installed when run as root), as a timm user evaluates it: runs.csv's test top-1 of its run."""
    fashion_mnist = load_script('train/fashion_mnist.py')
    folder = os.path.join(study.RESULTS, 'weights', model)
    shipped = json.loads(open(os.path.join(folder, 'study.json')).read())
    row = [r for r in study.read_rows(os.path.join(study.RESULTS, 'runs.csv'))
           if (r['model'], r['seed'], r['protocol']) == (model, str(shipped['seed']), shipped['protocol'])]
    assert row, f'{folder}/study.json names no row of runs.csv'
    data = tmp_path / 'data'
    fashion_mnist.write_fashion_mnist(str(data), val_per_class=0)
    _, top1 = evaluate_shipped(folder, str(data / 'test'))
    assert top1 == pytest.approx(float(row[0]['top1']), abs=0.015)  # a layout change may flip one of 10,000 images


def test_readme_figures_from_shipped_weights(quick, tmp_path):
    """make figures: README's two analysis PNGs and each model's bias figures from saved models alone (the quick
    study's two and an untrained local model, on the synthetic test images)."""
    import timm
    from timm_cada.load import save_local_dir
    root, _, _ = quick
    weights = tmp_path / 'weights'
    with pytest.raises(SystemExit, match='has no saved resnet26_cada_k7, resnet26_dw_k7, resnet26_local_k7: the '
                                         'study ships them \\(make study\\)'):
        figures.main(['--weights', str(weights), '--out', str(tmp_path / 'docs')])
    shutil.copytree(root / 'out' / 'weights', weights)
    kwargs = dict(small_stem=True, channels=[16, 32, 64, 128], num_classes=10, in_chans=1, img_size=28)
    local = timm.create_model('resnet26_local_k7', **kwargs).eval()
    save_local_dir(local, dict(input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), crop_pct=1.0), kwargs,
                   str(weights / 'resnet26_local_k7'))
    metrics = figures.main(['--weights', str(weights), '--out', str(tmp_path / 'docs'),
                            '--source', str(root / 'source')])
    for name in figures.FIGURES:
        with Image.open(tmp_path / 'docs' / name) as img:
            assert img.format == 'PNG'
    assert metrics['resnet26_dw_k7'] == {'spatial_variation': 0.0, 'context_sensitivity': 0.0}  # strict
    assert metrics['resnet26_local_k7']['context_sensitivity'] == 0.0  # no context (untrained: no variation yet)
    assert min(metrics['resnet26_cada_k7'].values()) > 0


def test_extra_seed_rounds_for_inconclusive_claims():
    """Once every model has its three seeds, a round gives the next extra seed to the models of the claims still
    inconclusive, if the whole round fits in what is left of the budget; decided claims get none."""
    undecided = rows_for({m: 90.0 for m in findings.MODELS}, spread=1.0)  # equal means, wide spread
    involved = findings.undecided_models(findings.model_stats(undecided))
    assert len(involved) > 10 and set(involved) <= set(findings.MODELS)
    def hours(per_run, slow=()):  # machine hours of rows: per_run each, twice that for the models in slow
        return lambda rs: sum(per_run * (2 if r['model'] in slow else 1) for r in rs)
    assert findings.seed_round(undecided, hours(0.3)) == [(m, 3) for m in involved]
    over = (20 - 48 * 0.3) / 0.3 - len(involved)  # slow models: the round's extra hours then exceed the budget
    assert findings.seed_round(undecided, hours(0.3, involved[:int(over) + 1])) == []
    assert findings.seed_round(undecided[1:], hours(0.01)) == []  # a model lacks a seed: not yet
    more = undecided + [dict(undecided[0], model=m, seed='3') for m in involved]
    assert findings.seed_round(more, hours(0.01)) == [
        (m, 4) for m in findings.undecided_models(findings.model_stats(more))]
    decided = rows_for({m: 80.0 + 3 * math.sqrt(i + 1) for i, m in enumerate(findings.MODELS)}, spread=0.01)
    assert findings.undecided_models(findings.model_stats(decided)) == []
    assert findings.seed_round(decided, hours(0.01)) == []
    # machine hours: wall minutes shared by the runs side by side, training minutes where a resumed run has more
    assert report.machine_hours([dict(train_minutes='30', wall_minutes='60', runs_at_once='2'),
                                 dict(train_minutes='90', wall_minutes='20', runs_at_once='1')]) == 2.0


def test_the_converged_study_adds_extra_seed_rounds(tmp_path, monkeypatch):
    """make study, all 48 converged runs done with claims inconclusive: the study trains a round of extra seeds
    (and stops when a round trains nothing); with --max-runs, --models or --seeds it does not."""
    monkeypatch.setattr(study, 'RESULTS', str(tmp_path))
    monkeypatch.setattr(findings, 'CONVERGED_DATA', findings.DataSpec(train_per_class=None, val_per_class=5))
    monkeypatch.setattr(study, 'update_quotes', lambda quote: None)  # not the repository's README
    pilot_rows = [dict(model=m, seed=str(s), epochs=str(e), val_top1=str(mean + 0.1 * s), val_top5='99',
                       train_images='50000', train_minutes='1', wall_minutes='1', runs_at_once='2', machine='m',
                       protocol=study.pilot_protocol_id())
                  for m in findings.PILOT_MODELS for s in findings.PILOT_SEEDS
                  for e, mean in zip(findings.PILOT_EPOCHS, (80, 85, 88, 88.2, 88.3))]
    study.write_rows(str(tmp_path / 'pilot.csv'), pilot_rows, pilot.COLUMNS, ('epochs', 'model', 'seed'))
    pid = study.protocol_hash(findings.converged(4))
    study.write_rows(str(tmp_path / 'runs.csv'), rows_for({m: 90.0 for m in findings.MODELS}, spread=1.0, protocol=pid))
    calls = []
    monkeypatch.setattr(study, 'run_jobs', lambda jobs, **kwargs: calls.append([(j.model, j.seed) for j in jobs])
                        or iter(()))
    source = fake_fashion_mnist(tmp_path / 'source', 20, 2)
    argv = ['--source', str(source), '--data-dir', str(tmp_path / 'data'), '--work', str(tmp_path / 'work')]
    study.main(argv)
    involved = findings.undecided_models(findings.model_stats(study.read_rows(str(tmp_path / 'runs.csv'))))
    assert calls == [[], [(m, 3) for m in involved]]
    for narrower in (['--max-runs', '5'], ['--models', 'resnet26_dw_k7'], ['--seeds', '0', '1']):
        calls.clear()
        study.main([*argv, *narrower])
        assert calls == [[]], narrower


def test_hours_left_at_each_models_pace():
    """The converged budget's planned runs left, each at its model's mean machine time per run so far (the mean
    run's for a model without one), and the report's sentence when they overrun the budget."""
    dw, cada = findings.MODELS[:2]
    rows = [dict(model=dw, seed='0', train_minutes='60', wall_minutes='60', runs_at_once='1'),
            dict(model=dw, seed='1', train_minutes='120', wall_minutes='120', runs_at_once='2'),
            dict(model=cada, seed='0', train_minutes='240', wall_minutes='240', runs_at_once='1')]
    # so far: 1 + 1 + 4 = 6 h, a mean run of 2 h; left: dw 1 run at 1 h, cada 2 at 4 h, 14 models x 3 at 2 h
    runs, hours = report.hours_left(rows)
    assert runs == 1 + 2 + 3 * (len(findings.MODELS) - 2) and hours == pytest.approx(1 + 8 + 2 * 3 * 14)
    assert report.hours_left(rows, models=(dw,), seeds=(0, 1)) == (0, 0.0)
    assert report.budget_use(rows) == (
        f'Machine time: 6.0 h so far of the 20 h budget; the {runs} planned runs left take about {hours:.1f} h more '
        f'at each model\'s mean per run so far (the mean run\'s for a model not run yet): {6 + hours:.1f} h in all, '
        f'{6 + hours - 20:.1f} h over it.')
    assert report.budget_use([]) == 'Machine time: 0.0 h so far of the 20 h budget.'
    assert report.budget_use(rows, models=(dw, cada), seeds=(0, 1)) == (  # a subset of the study: its runs left
        'Machine time: 6.0 h so far of the 20 h budget; the 1 planned runs left take about 4.0 h more at each '
        'model\'s mean per run so far (the mean run\'s for a model not run yet): 10.0 h in all, within the budget.')


def test_pilot_speed_counts_resumed_runs_by_their_training_minutes():
    """The pilot's speed is that of its longest schedule; a run resumed after a sitting that was not recorded
    has wall minutes below its training minutes (which add up over all sittings), so its training minutes count."""
    timed = dict(model='m', seed='0', epochs='4', train_images='50000', train_minutes='20', wall_minutes='25',
                 runs_at_once='2')
    resumed = dict(timed, epochs='8', train_minutes='40', wall_minutes='30')
    assert report.pilot_speed([timed, resumed]) == (pytest.approx(8 * 50000 / (40 / 2 * 60)), 8)
    assert report.pilot_speed([timed]) == (pytest.approx(4 * 50000 / (25 / 2 * 60)), 4)
    assert report.pilot_speed([]) is None


def test_finished_runs_are_reused(quick, monkeypatch):
    root, argv, _ = quick
    runs_csv = root / 'out' / 'runs.csv'
    before = runs_csv.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError(f'a finished run was trained again: {args}')

    monkeypatch.setattr(runs.subprocess, 'Popen', no_training)
    study.main(argv)  # every row in runs.csv
    assert runs_csv.read_text() == before
    lines = before.splitlines()
    runs_csv.write_text('\n'.join(lines[:2]) + '\n')  # a row lost: rebuilt from its finished run folder
    study.main(argv)
    rebuilt = runs_csv.read_text().splitlines()
    assert rebuilt[:2] == lines[:2] and rebuilt[2].split(',')[:10] == lines[2].split(',')[:10]


def test_rows_of_another_protocol_are_kept(quick):
    """The same model and seed under other train.py options is another run: both rows stay in runs.csv."""
    root, argv, _ = quick
    runs_csv = root / 'out' / 'runs.csv'
    before = study.read_rows(str(runs_csv))
    study.main(argv + ['--models', 'resnet26_dw_k7', '--', '--lr', '1e-3'])
    after = study.read_rows(str(runs_csv))
    assert len(after) == 3 and all(r in after for r in before)
    other = [r for r in after if r not in before][0]
    assert other['model'] == 'resnet26_dw_k7' and other['protocol'] != before[0]['protocol']


def test_max_runs_stops_before_training(quick, tmp_path, monkeypatch):
    root, argv, _ = quick
    monkeypatch.setattr(runs.subprocess, 'Popen', lambda *a, **k: pytest.fail('trained despite --max-runs 0'))
    out = tmp_path / 'out'
    study.main(argv[:argv.index('--output')] + ['--output', str(out), '--work', str(tmp_path / 'work'),
                                                '--max-runs', '0'])
    assert 'Runs done: quick 0 of 2 runs (in progress' in (out / 'README.md').read_text()


def test_interrupted_runs_resume(tmp_path):
    run_dir = tmp_path / 'run'
    assert '--resume' not in runs.train_command(study.job('m', 0, str(run_dir), 'data', study.RECIPE, (), []))
    run_dir.mkdir()
    (run_dir / 'last.pth.tar').write_bytes(b'')
    cmd = runs.train_command(study.job('m', 1, str(run_dir), 'data', study.RECIPE, findings.converged(8).options,
                                       ['--workers', '1']))
    assert cmd[cmd.index('--resume') + 1] == str(run_dir / 'last.pth.tar')
    assert cmd[cmd.index('--seed') + 1] == '1' and cmd[-2:] == ['--workers', '1']
    assert cmd[cmd.index('--test-split') + 1] == 'test' and '--preload-images' in cmd
    assert cmd[cmd.index('--epochs') + 1] == '8' and '--channels-last' in cmd


def test_protocol_changes_with_recipe_data_and_options(tmp_path):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text('epochs: 1\n')
    base = study.protocol_id(str(recipe), findings.DATA, [])
    assert base == study.protocol_id(str(recipe), findings.DATA, [])
    assert base != study.protocol_id(str(recipe), findings.QUICK_DATA, [])
    assert base != study.protocol_id(str(recipe), findings.DATA, ['--lr', '1e-3'])
    recipe.write_text('epochs: 2\n')
    assert base != study.protocol_id(str(recipe), findings.DATA, [])


def test_readme_and_model_card_quote_the_committed_verdicts():
    """README.md and MODEL_CARD.md show the verdicts that results/fashion_mnist/runs.csv gives, as they are."""
    rows = study.read_rows(os.path.join(study.RESULTS, 'runs.csv'))
    epochs, _ = study.pilot_decision()
    protocols = [findings.ONE_EPOCH] + ([findings.converged(epochs)] if epochs else [])
    judged, done = [], []
    for p in protocols:
        mine = [r for r in rows if r['protocol'] == study.protocol_hash(p)]
        judged.append(findings.judge_findings(findings.model_stats(mine)))
        done.append((p.name, len(mine), len(findings.MODELS) * len(findings.SEEDS)))
    verdicts = [(f.axis, [js[i][2] for js in judged]) for i, f in enumerate(findings.FINDINGS)]
    quote = report.verdict_quote(verdicts, done)
    for path in report.QUOTED_IN:
        with open(path) as f:
            assert f'{report.QUOTE_START}\n{quote}\n{report.QUOTE_END}' in f.read(), (
                f'{path}: the quoted verdicts are not those of results/fashion_mnist/runs.csv; run '
                f'`python train/study.py --max-runs 0` to rewrite them')


# ---- the converged protocol's pilot (train/pilot.py) ----

def pilot_stats(means, std=0.1):
    """(model, epochs) -> Stats for every pilot model at every pilot schedule: means[i] at PILOT_EPOCHS[i]."""
    return {(m, e): findings.Stats(len(findings.PILOT_SEEDS), mean, std)
            for m in findings.PILOT_MODELS for e, mean in zip(findings.PILOT_EPOCHS, means)}


def test_converged_schedule_is_the_shortest_whose_doubling_settles():
    assert findings.PILOT_EPOCHS == (1, 2, 4, 8, 16) and findings.PILOT_TOLERANCE == 0.3
    assert findings.converged_epochs(pilot_stats([80, 85, 88, 88.2, 88.3])) == 4  # 4 -> 8 moves 0.2
    assert findings.converged_epochs(pilot_stats([80, 85, 88, 89, 89.5])) == 16  # none settles: the longest
    assert findings.settles(pilot_stats([80, 85, 88, 89, 89.5]), 8) is False
    assert findings.settles(pilot_stats([80, 85, 88, 89, 89.5]), 16) is None  # no 32-epoch runs: cannot be told
    assert findings.converged_epochs(pilot_stats([80, 85, 88, 88.5, 88.6], std=0.6)) == 4  # within the seed spread
    falling = pilot_stats([80, 85, 88, 88.2, 88.3])
    falling[findings.PILOT_MODELS[2], 8] = findings.Stats(2, 87.5, 0.1)  # one model loses 0.5 from 4 to 8
    falling[findings.PILOT_MODELS[2], 16] = findings.Stats(2, 87.6, 0.1)
    assert findings.converged_epochs(falling) == 8
    partial = pilot_stats([80, 85, 88, 88.2, 88.3])
    partial[findings.PILOT_MODELS[0], 4] = findings.Stats(1, 88.0, 0.0)  # a seed missing at 4: undecided
    assert findings.converged_epochs(partial) is None


def test_converged_schedule_within_the_budget():
    """Only schedules whose converged protocol fits the budget are chosen: the shortest of those that settles,
    else the longest of those, once its doubling (where the pilot has it) is known."""
    settling_at_8 = pilot_stats([80, 85, 88, 89, 89.2])
    assert findings.converged_epochs(settling_at_8) == 8
    assert findings.converged_epochs(settling_at_8, fits=lambda e: e <= 4) == 4  # 4 -> 8 moved 1: not settled
    assert findings.converged_epochs(settling_at_8, fits=lambda e: False) is None
    waiting = dict(settling_at_8)
    del waiting[findings.PILOT_MODELS[0], 16]
    assert findings.converged_epochs(waiting) is None and findings.converged_epochs(waiting, lambda e: e <= 4) == 4
    # 16 models x 3 seeds x 8 epochs x 50,000 images at 500 images/s
    assert findings.converged_hours(8, 50000, 500.0) == pytest.approx(16 * 3 * 8 * 50000 / 500 / 3600)


def test_pilot_report_from_synthetic_rows(tmp_path):
    rows = [dict(model=m, seed=str(s), epochs=str(e), val_top1=str(mean + (0.1 if s else -0.1)), val_top5='99',
                 train_images='50000', train_minutes=str(3 * e), wall_minutes=str(3.2 * e), runs_at_once='2', machine='m',
                 protocol='p')
            for m in findings.PILOT_MODELS for s in findings.PILOT_SEEDS
            for e, mean in zip(findings.PILOT_EPOCHS, (80, 85, 88, 88.2, 88.3))]
    assert pilot.write_pilot(str(tmp_path), rows + [dict(rows[0], protocol='q', val_top1='10')], 'p', len(rows)) == 4
    text = (tmp_path / 'pilot.md').read_text()
    assert f'{len(rows)} of {len(rows)} runs done' in text and '**4 epochs**' in text
    assert '| resnet26_dw_k7 | 80.00 ± 0.14 (2) | 85.00 ± 0.14 (2)<br>+5.00 from 1 ep |' in text
    # 16 models x 3 seeds x 4 epochs x 50,000 images at 2 x 50,000 images / 3.2 min = 520.8 img/s: 5.1 hours
    assert '(520 training images/s' not in text and '(521 training images/s' in text and 'about 5.1 hours' in text
    with Image.open(tmp_path / 'pilot.png') as img:
        assert img.format == 'PNG' and img.size[0] > 400


def test_pilot_end_to_end_on_the_validation_split(tmp_path, monkeypatch):
    """Two schedules of one model side by side, on synthetic idx files: pilot.csv's rows, each run its own
    schedule in channels_last with its images preloaded, no test evaluation; a second start trains nothing."""
    monkeypatch.setattr(pilot, 'CONVERGED_DATA', findings.DataSpec(train_per_class=None, val_per_class=10))
    source = fake_fashion_mnist(tmp_path / 'source', 40, 5)
    argv = ['--models', 'resnet26_dw_k7', '--seeds', '0', '--epochs', '2', '1', '--at-once', '2', '--source',
            str(source), '--data-dir', str(tmp_path / 'data'), '--output', str(tmp_path / 'out'),
            '--work', str(tmp_path / 'work')]
    assert pilot.main(argv) is None  # three pilot models are needed for a decision
    rows = study.read_rows(str(tmp_path / 'out' / 'pilot.csv'))
    assert [(r['model'], r['epochs'], r['train_images']) for r in rows] == [
        ('resnet26_dw_k7', '1', '300'), ('resnet26_dw_k7', '2', '300')]
    assert all(1 < float(r['runs_at_once']) <= 2 for r in rows)  # side by side
    for r in rows:
        folder = tmp_path / 'work' / r['protocol'] / f'resnet26_dw_k7-e{r["epochs"]}-s0'
        results = json.loads((folder / 'results.json').read_text())
        assert results['epochs'] == results['num_epochs'] == int(r['epochs']) and 'test_top1' not in results
        assert results['top1'] == pytest.approx(float(r['val_top1']), abs=0.01)
        args = (folder / 'args.yaml').read_text()
        assert 'channels_last: true' in args and 'preload_images: true' in args
        assert (folder / runs.LOG).is_file()
    assert '2 of 2 runs done' in (tmp_path / 'out' / 'pilot.md').read_text()
    monkeypatch.setattr(runs.subprocess, 'Popen', lambda *a, **k: pytest.fail('a finished pilot run trained again'))
    pilot.main(argv)
