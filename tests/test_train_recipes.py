""" The shared recipes and the ablation driver: recipes parse, name registered models, and train/ablate.py compares. """
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import timm
import timm_cada  # noqa: F401
from helpers import SUBPROCESS_ENV, TINY, load_script, make_image_folder

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / 'train' / 'configs').glob('*.yaml'))


trainer = load_script('train/train.py')
ablate = load_script('train/ablate.py')


def test_recipes_exist():
    assert {p.name for p in RECIPES} >= {'imagenet_100ep.yaml', 'imagenet_300ep.yaml', 'digits.yaml'}


@pytest.mark.parametrize('recipe', RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_names_a_registered_model(recipe):
    cfg = yaml.safe_load(recipe.read_text())
    args = trainer.parse_args(['-c', str(recipe)])
    for key, value in cfg.items():
        assert getattr(args, key) == value, key
    # Shared with timm's train.py: no option that only our trainer knows, no run-specific paths.
    assert not set(cfg) & (set(trainer.OURS_ONLY) | set(trainer.NOT_IN_RECIPE))
    assert timm.is_model(args.model) and args.model in timm.list_models(module='resnet_cada')


def test_imagenet_recipes_share_one_procedure_per_budget():
    a, b = (yaml.safe_load((REPO / 'train' / 'configs' / f'imagenet_{n}ep.yaml').read_text()) for n in (100, 300))
    assert (a['epochs'], b['epochs']) == (100, 300)
    assert a['img_size'] == b['img_size'] == 224 and a['num_classes'] == b['num_classes'] == 1000


@pytest.mark.parametrize('depth', (26, 50))
def test_every_ablation_row_names_registered_models(depth):
    for name in ablate.ABLATION_AXES:
        models = ablate.ablation_models(name, depth)
        assert models and all(timm.is_model(m) for m in models), name


def test_unknown_ablation_is_a_clear_error():
    with pytest.raises(ValueError, match='--ablation must be one of'):
        ablate.ablation_models('locallity', 50)


def test_ablate_trains_and_writes_table_csv_plot(tmp_path):
    data = make_image_folder(tmp_path / 'data', per_class=(4, 2))
    out = tmp_path / 'ablation'
    models = ['resnet26_dw_k3', 'resnet26_cada_k3']
    cmd = [sys.executable, str(REPO / 'train' / 'ablate.py'), '--models', *models, '--data-dir', str(data),
           '--output', str(out), '--', '--epochs', '1', *TINY[2:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / 'ablation.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['model'] for r in rows] == models
    assert all(r['input'] == '32x32' and 0 <= float(r['top-1']) <= 100 for r in rows)
    assert float(rows[1]['params (M)']) > float(rows[0]['params (M)'])  # CADA adds its bases and CA generator
    table = (out / 'ablation.md').read_text()
    assert all(f'| {m} |' in table and f'| {m} |' in proc.stdout for m in models)
    assert (out / 'ablation.png').read_bytes()[:4] == b'\x89PNG'
    # A second call reuses the finished runs instead of training again.
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert again.returncode == 0 and again.stdout.count('reused (delete it to train again)') == 2
    # A longer recipe resumes them; stopped early (--stop-after), they are tabulated as they stand.
    (out / 'ablation.csv').unlink()
    at = cmd.index('--epochs') + 1
    longer = cmd[:at] + ['3'] + cmd[at + 1:] + ['--stop-after', '1']
    stopped = subprocess.run(longer, capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert stopped.returncode == 0 and 'reused' not in stopped.stdout, stopped.stderr[-4000:]
    with open(out / 'ablation.csv') as f:
        assert [r['model'] for r in csv.DictReader(f)] == models
    for m in models:
        assert json.loads((out / m / 'results.json').read_text())['epochs'] == 2
