""" MODEL_CARD.md stays true: one row per registered model, accuracy only from the manifest. """
from pathlib import Path

import pytest
import timm

import timm_cada  # noqa: F401
from timm_cada.pretrained import load_manifest
from timm_cada.profile import count_macs, count_params
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


model_card = load_script('weights/model_card.py')


@pytest.fixture(scope='module')
def card():
    return (ROOT / 'MODEL_CARD.md').read_text(encoding='utf-8')


@pytest.fixture(scope='module')
def rows(card):
    section = card.split(model_card.START)[1].split(model_card.END)[0]
    lines = [l for l in section.splitlines() if l.startswith('|')]
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    return {r['model']: r for r in (dict(zip(header, (c.strip() for c in l.strip('|').split('|')))) for l in lines[2:])}


def test_table_lists_every_registered_model_and_no_other(rows):
    assert sorted(rows) == sorted(timm.list_models(module='resnet_cada'))


def test_accuracy_only_from_published_weights(card, rows):
    manifest = load_manifest()
    for name, row in rows.items():
        assert row['top-1 (%)'] == model_card._accuracy([e for e in manifest.values() if e.model == name])
    if not manifest:
        assert '**None.** No model of this family has been trained and published yet' in card
    for entry in manifest.values():
        assert f'`{entry.name}`' in card and entry.sha256 in card


def test_throughput_column_matches_benchmarks(rows):
    measured = model_card.measured_throughput()
    assert {name: row['CPU img/s'] for name, row in rows.items()} == {
        name: measured.get(name, model_card.NOT_MEASURED) for name in rows}


@pytest.mark.parametrize('name', ['resnet26_dw_k3', 'resnet26_cada_k7_rpe'])
def test_params_and_macs_are_current(rows, name):
    model = timm.create_model(name)
    assert rows[name]['params (M)'] == f'{count_params(model) / 1e6:.2f}'
    assert rows[name]['GMACs @224'] == f'{count_macs(model) / 1e9:.2f}'


def test_ablation_axis_names_each_model(rows):
    assert rows['resnet50_cada_k7_b4']['ablation axis'] == 'spatial invariance (B=4 bases)'
    assert rows['resnet26_position_k7']['ablation axis'].startswith('context awareness')
    with pytest.raises(ValueError, match='no ablation axis known'):
        model_card.ablation_axis('resnet50')


def test_measured_throughput_reads_a_results_table(tmp_path):
    results = tmp_path / 'RESULTS.md'
    results.write_text(
        'Machine: 2-core CPU\n\n| C | fwd_ms |\n|---|---|\n| 64 | 1.0 |\n\n'
        '| model | params_m | train_img_s | infer_img_s_eager | ratio |\n|---|---|---|---|---|\n'
        '| `resnet26_dw_k3` | 9.75 | 11.0 | 51.2 | 1.00 |\n| resnet26_cada_k7 | 10.04 | 5.0 | 20.5 | 0.40 |\n\n'
        '| model | img/s |\n|---|---|\n| resnet26_dw_k3 | 99 |\n')
    assert model_card.measured_throughput(results) == {'resnet26_dw_k3': '51.2', 'resnet26_cada_k7': '20.5'}
    assert model_card.measured_throughput(tmp_path / 'missing.md') == {}
