""" Publishing weights and loading them back from a real local Hugging Face cache, offline.

A small "trained" resnet26_cada_k7 (10 classes, random weights, its own EMA) is saved as a train/train.py
checkpoint, published with weights/publish.py --dry-run, laid out as a Hugging Face cache
(models--ORG--NAME/{blobs,refs/main,snapshots/REV}) and loaded with HF_HUB_OFFLINE=1 through a manifest entry
(pretrained=True), through hf-hub:ORG/NAME and through local-dir:DIR.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image

import timm
import timm_cada
from timm_cada.models import NoPretrainedWeightsError
from timm_cada.warm_start import warm_start
from timm_cada.pretrained import (
    WeightsIntegrityError, file_sha256, load_manifest, pretrained_cfgs, verified_weights_file)
from helpers import EvilPickle, lay_out_hf_cache, load_script

ROOT = Path(__file__).resolve().parents[1]
MODEL = 'resnet26_cada_k7'
REPO = 'timm-cada-test/resnet26_cada_k7.tiny'
TRUNC_REPO = 'timm-cada-test/resnet26_cada_k7.trunc'
INPUT = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


publish = load_script('weights/publish.py')


def _perturbed(state_dict, seed):
    """Every float tensor moved off its init (BN stats included), so outputs depend on every weight."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state_dict.items():
        if v.is_floating_point():
            noise = torch.rand(v.shape, generator=g) if k.endswith('running_var') else torch.randn(v.shape, generator=g)
            v = v + 0.05 * noise
        out[k] = v
    return out


def _outputs(state_dict):
    model = timm.create_model(MODEL, num_classes=10)
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return model.eval()(INPUT)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A train/train.py-format checkpoint with model and EMA weights, and the outputs of each."""
    tmp = tmp_path_factory.mktemp('trained')
    init = timm.create_model(MODEL, num_classes=10).state_dict()
    weights, ema = _perturbed(init, 1), _perturbed(init, 2)
    ckpt = tmp / 'last.pth.tar'
    torch.save(dict(
        arch=MODEL, model_kwargs=dict(num_classes=10), epoch=3, state_dict=weights, state_dict_ema=ema,
        optimizer={'state': {}}, scheduler={}, scaler=None, top1=61.25, ema_top1=58.5, eval_metric='ema_top1',
        metric=58.5, args=dict(dataset='', eval_metric='top1', epochs=4, lr=0.1, data_dir='/private/data',
                               config='train/configs/tiny.yaml', model=MODEL), version=3), ckpt)
    return dict(checkpoint=ckpt, weights=weights, ema=ema, ema_out=_outputs(ema), tmp=tmp)


@pytest.fixture(scope='module')
def published(trained):
    out = trained['tmp'] / 'pub'
    result = publish.main([
        '--checkpoint', str(trained['checkpoint']), '--model', MODEL, '--repo-id', REPO, '--out', str(out),
        '--dataset', 'tiny-10', '--tag', 'tiny', '--top1', '63.5', '--top5', '88', '--dry-run'])
    return dict(result, out=out)


@pytest.fixture(scope='module')
def hub(trained, published):
    """A Hugging Face cache holding the published repo and a truncated copy, plus a manifest listing them."""
    tmp = trained['tmp']
    cache = tmp / 'hf' / 'hub'
    rev = hashlib.sha1(b'rev-good').hexdigest()
    trunc_rev = hashlib.sha1(b'rev-trunc').hexdigest()
    lay_out_hf_cache(cache, REPO, published['out'], rev)
    trunc_dir = tmp / 'pub_trunc'
    trunc_dir.mkdir()
    for f in published['out'].iterdir():
        data = f.read_bytes()
        (trunc_dir / f.name).write_bytes(data[:len(data) // 2] if f.suffix == '.safetensors' else data)
    lay_out_hf_cache(cache, TRUNC_REPO, trunc_dir, trunc_rev)
    good = dict(published['manifest_entry'], revision=rev)
    manifest = tmp / 'manifest.json'
    manifest.write_text(json.dumps({'weights': [
        good,
        dict(good, tag='badsha', sha256=hashlib.sha256(b'not these weights').hexdigest()),
        dict(good, tag='trunc', hf_hub_id=TRUNC_REPO, revision=trunc_rev),
    ]}))
    return dict(cache=cache, manifest=manifest, rev=rev, trunc_dir=trunc_dir, good=good)


def test_publish_dry_run_writes_timm_hub_files(trained, published, capsys):
    out = published['out']
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    weights = safetensors.torch.load_file(out / 'model.safetensors')
    assert weights.keys() == trained['ema'].keys()  # training state stripped, EMA weights by default
    assert all(torch.equal(weights[k], v) for k, v in trained['ema'].items())
    assert published['sha256'] == file_sha256(out / 'model.safetensors')
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == MODEL and config['num_classes'] == 10 and config['num_features'] == 2048
    assert config['model_args']['num_classes'] == 10 and config['pretrained_cfg']['num_classes'] == 10
    card = (out / 'README.md').read_text()
    for needle in ('library_name: timm', '- tiny-10', 'Params (M): 8.01', 'GMACs @224x224: 1.51',
                   '| tiny-10 | 63.50 | 88.00 | 224x224, crop 0.95 | given at publication |', 'EMA weights',
                   'train/configs/tiny.yaml', 'arXiv:2210.17141', 'import timm_cada',
                   f'hf-hub:{REPO}', published['sha256'], 'license: apache-2.0'):
        assert needle in card, needle
    assert '/private/data' not in card
    entry = published['manifest_entry']
    assert entry['model'] == MODEL and entry['tag'] == 'tiny' and entry['top1'] == 63.5 and entry['top5'] == 88
    assert entry['sha256'] == published['sha256'] and entry['revision'] is None


def test_publish_refuses_to_overwrite_and_force_publishes_model_weights(trained, published, tmp_path):
    out = tmp_path / 'pub'
    out.mkdir()
    (out / 'config.json').write_text('{"keep": true}')
    args = ['--checkpoint', str(trained['checkpoint']), '--model', MODEL, '--repo-id', REPO, '--out', str(out),
            '--dry-run', '--no-ema']
    with pytest.raises(FileExistsError, match='--force'):
        publish.main(args)
    assert (out / 'config.json').read_text() == '{"keep": true}'
    result = publish.main(args + ['--force', '--dataset', 'imagenet-1k'])
    weights = safetensors.torch.load_file(out / 'model.safetensors')
    assert all(torch.equal(weights[k], v) for k, v in trained['weights'].items())
    # the checkpoint's 'top1' is the eval top-1 of these (non-EMA) weights
    assert ('| imagenet-1k | 61.25 |  | 224x224, crop 0.95 | evaluated by train/train.py after 4 epochs |'
            in (out / 'README.md').read_text())
    assert result['manifest_entry']['tag'] == 'in1k' and result['manifest_entry']['top1'] == 61.25


def test_publish_ema_weights_with_their_recorded_top1(trained, tmp_path):
    """The documented train -> publish flow: EMA weights by default, listed with the EMA's own top-1."""
    result = publish.export(trained['checkpoint'], MODEL, REPO, tmp_path, dataset='tiny-10')
    assert result['manifest_entry']['top1'] == 58.5
    assert '| tiny-10 | 58.50 |' in (tmp_path / 'README.md').read_text()


@pytest.mark.parametrize('model_name, run_args, entry', [
    ('resnet26_local_k7', dict(img_size=32, crop_pct=1.0), True),
    ('resnet26_dw_k3', dict(input_size=[3, 32, 32], crop_pct=1.0, mean=[0.5, 0.5, 0.5]), False),
])
def test_publish_takes_preprocessing_from_the_training_run(tmp_path, model_name, run_args, entry):
    """Input size, crop and normalisation of the run (not the registry's 224 / 0.95) reach config.json, the
    rebuild check, the card and the manifest entry; a manifest entry only when it can express them."""
    kwargs = dict(num_classes=3, img_size=32) if model_name.endswith('local_k7') else dict(num_classes=3)
    ckpt = tmp_path / 'last.pth.tar'
    torch.save(dict(arch=model_name, model_kwargs=kwargs, epoch=0, top1=80.0, eval_metric='top1', metric=80.0,
                    state_dict=timm.create_model(model_name, **kwargs).state_dict(), args=run_args), ckpt)
    result = publish.export(ckpt, model_name, REPO, tmp_path / 'out', dataset='digits')
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32] and config['pretrained_cfg']['crop_pct'] == 1.0
    assert config['pretrained_cfg']['mean'] == list(run_args.get('mean', timm.data.IMAGENET_DEFAULT_MEAN))
    assert config['model_args']['num_classes'] == 3
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert 'GMACs @32x32' in card and '| digits | 80.00 |  | 32x32, crop 1.0 |' in card
    if entry:
        assert result['manifest_entry']['input_size'] == [3, 32, 32] and result['manifest_entry']['crop_pct'] == 1.0
    else:
        assert result['manifest_entry'] is None and result['extra_args'] == dict(mean=(0.5, 0.5, 0.5))


def test_published_small_stem_model_keeps_its_training_size(tmp_path):
    """A study-style run (small stem, 1 channel, 28 px; img_size not among the model kwargs, which only a size
    that sizes parameters needs) loads through local-dir: at 28 px, so timm's own data config and transform give
    28 x 28 inputs (not 224), and with the final map's size of that input."""
    kwargs = dict(num_classes=10, small_stem=True, channels=[16, 32, 64, 128], in_chans=1)
    model = timm.create_model(MODEL, **kwargs).eval()
    ckpt = tmp_path / 'last.pth.tar'
    torch.save(dict(arch=MODEL, model_kwargs=kwargs, epoch=0, top1=80.0, eval_metric='top1', metric=80.0,
                    state_dict=model.state_dict(), args=dict(img_size=28, in_chans=1, mean=[0.286], std=[0.353],
                                                             crop_pct=1.0, interpolation='bilinear')), ckpt)
    publish.export(ckpt, MODEL, REPO, tmp_path / 'out', dataset='fashion_mnist')
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    assert loaded.pretrained_cfg['input_size'] == (1, 28, 28) and loaded.pretrained_cfg['pool_size'] == (4, 4)
    config = timm.data.resolve_data_config({}, model=loaded)
    assert config['input_size'] == (1, 28, 28) and tuple(config['mean']) == (0.286,)
    x = timm.data.create_transform(**config)(Image.new('L', (28, 28), 128)).unsqueeze(0)
    assert x.shape == (1, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_publish_bare_state_dict_and_safetensors(trained, published, tmp_path):
    bare = tmp_path / 'bare.pth'
    torch.save(trained['weights'], bare)
    with pytest.raises(ValueError, match='does not fit'):  # no kwargs recorded: 1000 classes by default
        publish.export(bare, MODEL, REPO, tmp_path / 'a')
    result = publish.export(published['out'] / 'model.safetensors', MODEL, REPO, tmp_path / 'b',
                            model_kwargs=dict(num_classes=10))
    assert result['sha256'] == published['sha256']  # same tensors, same file
    assert result['manifest_entry'] is None  # no dataset / top-1: nothing to list


def test_publish_rejects_mismatched_arch_and_missing_ema(trained, tmp_path):
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        publish.export(trained['checkpoint'], 'resnet26_dw_k7', REPO, tmp_path)
    with pytest.raises(ValueError, match='not a timm_cada model'):
        publish.export(trained['checkpoint'], 'resnet50', REPO, tmp_path)
    no_ema = tmp_path / 'no_ema.pth'
    torch.save(dict(arch=MODEL, model_kwargs=dict(num_classes=10), state_dict=trained['weights']), no_ema)
    with pytest.raises(ValueError, match='has no EMA weights'):
        publish.export(no_ema, MODEL, REPO, tmp_path, use_ema=True)


_LOADER = r'''
import json, sys, torch
import timm, timm_cada
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec['threads'])  # the reference's thread count, so outputs can be compared bit for bit
x = torch.load(spec['input'])
ref = torch.load(spec['ref'])
res = {'list_pretrained': timm.list_pretrained('resnet26_cada*')}
def run(name, fn):
    try:
        with torch.no_grad():
            res[name] = {'equal': bool(torch.equal(fn().eval()(x), ref))}
    except Exception as e:
        res[name] = {'error': type(e).__name__, 'message': str(e)}
run('manifest_default', lambda: timm.create_model('resnet26_cada_k7', pretrained=True))
run('manifest_tag', lambda: timm.create_model('resnet26_cada_k7.tiny', pretrained=True))
run('hf_hub', lambda: timm.create_model('hf-hub:' + spec['repo'], pretrained=True))
run('hf_hub_rev', lambda: timm.create_model('hf-hub:' + spec['repo'] + '@' + spec['rev'], pretrained=True))
run('local_dir', lambda: timm.create_model('local-dir:' + spec['dir'], pretrained=True))
run('badsha', lambda: timm.create_model('resnet26_cada_k7.badsha', pretrained=True))
run('trunc_manifest', lambda: timm.create_model('resnet26_cada_k7.trunc', pretrained=True))
run('trunc_hf_hub', lambda: timm.create_model('hf-hub:' + spec['trunc_repo'], pretrained=True))
print(json.dumps(res))
'''


@pytest.fixture(scope='module')
def offline_loads(trained, published, hub):
    """Load every way in a fresh interpreter whose HF_HUB_* environment is set before huggingface_hub import."""
    tmp = trained['tmp']
    torch.save(INPUT, tmp / 'x.pt')
    torch.save(trained['ema_out'], tmp / 'ref.pt')
    spec = dict(input=str(tmp / 'x.pt'), ref=str(tmp / 'ref.pt'), repo=REPO, rev=hub['rev'], threads=torch.get_num_threads(),
                dir=str(published['out']), trunc_repo=TRUNC_REPO)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp / 'hf'), HF_HUB_CACHE=str(hub['cache']),
               TIMM_CADA_WEIGHTS_MANIFEST=str(hub['manifest']))
    proc = subprocess.run([sys.executable, '-c', _LOADER, json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_manifest_entry_offers_pretrained(offline_loads):
    assert offline_loads['list_pretrained'] == [
        'resnet26_cada_k7.badsha', 'resnet26_cada_k7.tiny', 'resnet26_cada_k7.trunc']
    assert offline_loads['manifest_default'] == {'equal': True}  # the first entry listed is the default
    assert offline_loads['manifest_tag'] == {'equal': True}


@pytest.mark.parametrize('how', ['hf_hub', 'hf_hub_rev', 'local_dir'])
def test_hub_and_local_dir_rebuild_the_trained_model(offline_loads, how):
    assert offline_loads[how] == {'equal': True}


def test_sha256_mismatch_and_truncated_weights_are_refused(offline_loads, published):
    bad = offline_loads['badsha']
    assert bad['error'] == 'WeightsIntegrityError'
    assert published['sha256'] in bad['message'] and 'the weights manifest lists' in bad['message']
    trunc = offline_loads['trunc_manifest']
    assert trunc['error'] == 'WeightsIntegrityError' and 'truncated' in trunc['message']
    hub_trunc = offline_loads['trunc_hf_hub']
    assert hub_trunc['error'] == 'WeightsIntegrityError' and 'safetensors file is truncated or corrupted' in hub_trunc['message']


@pytest.mark.parametrize('damage', ['truncate', 'header'])
def test_local_dir_refuses_damaged_safetensors(published, tmp_path, damage):
    for f in published['out'].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = tmp_path / 'model.safetensors'
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) - 1000] if damage == 'truncate' else b'\xff' * 8 + data[8:])
    with pytest.raises(WeightsIntegrityError, match='truncated or corrupted'):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)


def test_verified_weights_file_checks_sha256(hub, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    entry = load_manifest(hub['manifest'])['resnet26_cada_k7.tiny']
    path = verified_weights_file(entry, cache_dir=hub['cache'])
    assert Path(path).resolve().parent.name == 'blobs' and file_sha256(path) == entry.sha256
    bad = load_manifest(hub['manifest'])['resnet26_cada_k7.badsha']
    with pytest.raises(WeightsIntegrityError, match='sha256 of .* is [0-9a-f]{64}, but the weights manifest'):
        verified_weights_file(bad, cache_dir=hub['cache'])


def test_pickles_that_run_code_are_refused(published, tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'fc.bias': torch.zeros(10)}, 'args': EvilPickle(marker)}, evil)
    with pytest.raises(ValueError, match='weights_only=True'):
        publish.export(evil, MODEL, REPO, tmp_path / 'out')
    with pytest.raises(ValueError, match='weights_only=True'):
        warm_start(timm.create_model(MODEL), evil)
    local = tmp_path / 'local'
    local.mkdir()
    (local / 'config.json').write_text((published['out'] / 'config.json').read_text())
    torch.save(EvilPickle(marker), local / 'pytorch_model.bin')
    with pytest.raises(RuntimeError, match='weights_only=True blocked'):
        timm.create_model(f'local-dir:{local}', pretrained=True)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the pickle is live: read unsafely, it runs
    assert marker.exists()


def test_no_entry_means_no_pretrained_weights():
    with pytest.raises(NoPretrainedWeightsError, match=r'No pretrained weights are published for .resnet26_dw_k3'):
        timm.create_model('resnet26_dw_k3', pretrained=True)
    with pytest.raises(NoPretrainedWeightsError, match=r'weights/publish.py --checkpoint CKPT --model resnet26_dw_k3'):
        timm.create_model('resnet26_dw_k3', pretrained=True)


def test_packaged_manifest_is_what_the_registry_offers():
    manifest = load_manifest(Path(timm_cada.__file__).with_name('weights_manifest.json'))
    offered = timm.list_models(module='resnet_cada', pretrained=True, include_tags=True)
    assert sorted(offered) == sorted(manifest)


_GOOD = dict(model=MODEL, tag='in1k', hf_hub_id='org/name', revision='a' * 40, sha256='b' * 64,
             dataset='imagenet-1k', top1=70.0)


@pytest.mark.parametrize('change, match', [
    (dict(sha256='B' * 64), 'sha256='),
    (dict(revision='main'), 'revision='),
    (dict(hf_hub_id='name-without-org'), 'hf_hub_id='),
    (dict(tag='In1k'), 'tag='),
    (dict(filename='pytorch_model.bin'), 'filename='),
    (dict(url='http://x'), r"unknown keys \['url'\]"),
    # field types: a wrong type must not reach import-time formatting (pretrained cfg descriptions)
    (dict(top1='70.0'), "top1='70.0' is invalid, expected a number"),
    (dict(top1=True), 'top1=True is invalid'),
    (dict(top1=float('nan')), 'top1=nan is invalid'),
    (dict(top1=170.0), 'top1=170.0 is invalid'),
    (dict(top5='90'), "top5='90' is invalid"),
    (dict(num_classes=10.5), 'num_classes=10.5 is invalid, expected an integer >= 1'),
    (dict(num_classes='1000'), 'num_classes='),
    (dict(input_size=[3, 224]), 'input_size='),
    (dict(input_size=[3, 224.0, 224]), 'input_size='),
    (dict(crop_pct=0), 'crop_pct=0 is invalid'),
    (dict(crop_pct='0.9'), 'crop_pct='),
    (dict(dataset=''), 'dataset='),
    (dict(recipe=5), 'recipe=5 is invalid'),
    (dict(license=None), 'license=None is invalid'),
    (dict(model=3), 'model=3 is invalid'),
    (dict(filename='../model.safetensors'), 'filename='),
])
def test_manifest_validation(tmp_path, change, match):
    path = tmp_path / 'm.json'
    path.write_text(json.dumps({'weights': [dict(_GOOD, **change)]}))
    with pytest.raises(ValueError, match=match):
        load_manifest(path)


def test_bad_manifest_stops_import_with_the_field_named(tmp_path):
    path = tmp_path / 'm.json'
    path.write_text(json.dumps({'weights': [dict(_GOOD, top1='89.1')]}))
    proc = subprocess.run([sys.executable, '-c', 'import timm_cada'], capture_output=True, text=True,
                          env=dict(os.environ, TIMM_CADA_WEIGHTS_MANIFEST=str(path)))
    assert proc.returncode != 0
    assert "top1='89.1' is invalid, expected a number from 0 to 100" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize('kwargs, match', [
    (dict(repo_id='../../x'), "--repo-id: hf_hub_id='../../x' is invalid"),
    (dict(tag='Bad Tag!'), "--tag: tag='Bad Tag!' is invalid"),
    (dict(top1=float('nan')), '--top1: top1=nan is invalid'),
    (dict(top5=101.0), '--top5: top5=101.0 is invalid'),
    (dict(dataset=' '), '--dataset: '),
])
def test_publish_checks_the_manifest_rules_before_writing(trained, tmp_path, kwargs, match):
    """What publish.py would print as a manifest entry must be one the manifest loader accepts."""
    kwargs = dict(dict(repo_id=REPO, dataset='tiny-10'), **kwargs)
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=re.escape(match)):
        publish.export(trained['checkpoint'], MODEL, kwargs.pop('repo_id'), out, **kwargs)
    assert not out.exists()


def test_publish_names_the_timm_it_needs(trained, tmp_path, monkeypatch):
    """On a timm older than publishing needs, the command says which timm to install, before writing anything."""
    monkeypatch.setattr(timm, '__version__', '1.0.21')
    out = tmp_path / 'out'
    with pytest.raises(RuntimeError, match=re.escape(
            f"needs timm>={publish.SAVE_FOR_HF_TIMM}, but timm 1.0.21 is installed; upgrade it with: pip install")):
        publish.export(trained['checkpoint'], MODEL, REPO, out, dataset='tiny-10')
    assert not out.exists()


def test_manifest_duplicates_and_unregistered_models(tmp_path):
    path = tmp_path / 'm.json'
    path.write_text(json.dumps({'weights': [_GOOD, _GOOD]}))
    with pytest.raises(ValueError, match='listed twice'):
        load_manifest(path)
    path.write_text(json.dumps({'weights': [dict(_GOOD, model='resnet99_cada')]}))
    with pytest.raises(ValueError, match='not registered'):
        pretrained_cfgs({MODEL: {}}, load_manifest(path))


def test_pretrained_cfgs_from_manifest(tmp_path):
    path = tmp_path / 'm.json'
    path.write_text(json.dumps({'weights': [dict(_GOOD, num_classes=10, top5=90.0)]}))
    cfgs = pretrained_cfgs({MODEL: dict(url='', num_classes=1000), 'resnet26_dw_k3': dict(url='')},
                           load_manifest(path))
    assert set(cfgs) == {f'{MODEL}.in1k', 'resnet26_dw_k3'}  # a published model has tagged cfgs only
    cfg = cfgs[f'{MODEL}.in1k']
    assert cfg['hf_hub_id'] == 'org/name@' + 'a' * 40 and cfg['hf_hub_filename'] == 'model.safetensors'
    assert cfg['num_classes'] == 10 and 'top-1 70.00%, top-5 90.00%' in cfg['description']


def test_checkpoint_top1_is_that_of_the_published_weights():
    assert publish.checkpoint_top1(dict(top1=61.25, ema_top1=58.5, weights='model')) == 61.25
    assert publish.checkpoint_top1(dict(top1=61.25, ema_top1=58.5, weights='EMA')) == 58.5
    assert publish.checkpoint_top1(dict(top1=61.25, weights='EMA')) is None


def test_manifest_entries_only_for_plain_variants():
    """A registered name + pretrained cfg rebuilds only the variant's own args; others need hf-hub:."""
    assert publish._variant_args(MODEL, dict(num_classes=10, in_chans=3, global_pool='avg'), False) == {}
    assert publish._variant_args(MODEL, dict(mixer_args=dict(num_bases=8)), False) == {}  # the default
    assert publish._variant_args(MODEL, dict(mixer_args=dict(num_bases=4)), False) == dict(mixer_args=dict(num_bases=4))
    assert publish._variant_args('resnet26_position_k7', dict(img_size=[128, 128]), False) == dict(img_size=[128, 128])
    assert publish._variant_args('resnet26_local_k7', dict(img_size=[128, 128]), True) == {}
    assert publish._dataset_tag('imagenet-1k') == 'in1k' and publish._dataset_tag('Tiny Digits-10') == 'tiny_digits_10'
