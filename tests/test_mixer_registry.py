""" Bring your own mixer: a mixer defined outside the package (tests/user_mixers.py), registered with
timm_cada.register_mixer, in every bottleneck of a model, kept at its own init, counted as a plain module,
trained by train/ablate.py and train/train.py; and the registry's refusals. """
import csv
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import timm_cada
from timm_cada.layers import MIXERS, get_mixer, list_mixers
from timm_cada.checkpoint import read_checkpoint
from timm_cada.models import CadaBottleneck
from timm_cada.profile import count_macs
from helpers import REPO, SUBPROCESS_ENV, TINY, make_image_folder
from user_mixers import BoxMixer, TimmInitBoxMixer

pytestmark = pytest.mark.core  # also run against the oldest supported timm


def bottleneck_mixers(model):
    return [m.conv2 for m in model.modules() if isinstance(m, CadaBottleneck)]


def test_user_mixer_in_every_bottleneck_keeps_its_init():
    model = timm.create_model('resnet26_dw_k7', mixer='box', kernel_size=5, num_classes=3)
    mixers = bottleneck_mixers(model)
    assert len(mixers) == 8 and all(type(m) is BoxMixer for m in mixers)
    assert {m.conv.stride for m in mixers} == {(1, 1), (2, 2)}  # the stride-2 blocks too
    for m in mixers:  # timm's ResNet init would have drawn these from a normal distribution
        assert torch.equal(m.conv.weight, torch.full_like(m.conv.weight, 1 / 25)) and torch.equal(m.gain, torch.ones_like(m.gain))
    assert model.layer1[0].conv3.weight.std() > 0  # the rest of the model got timm's init
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert all(m.conv.weight.grad is not None and m.gain.grad is not None for m in mixers)


def test_user_mixer_options_and_timm_init_on_request():
    model = timm.create_model('resnet26_dw_k7', mixer='box', kernel_size=3, mixer_args=dict(gain=0.5))
    assert all(torch.equal(m.gain, torch.full_like(m.gain, 0.5)) for m in bottleneck_mixers(model))
    asked = timm.create_model('resnet26_dw_k7', mixer='box_timm_init', kernel_size=3)
    weights = [m.conv.weight for m in bottleneck_mixers(asked)]
    assert all(type(m) is TimmInitBoxMixer for m in bottleneck_mixers(asked))
    assert not any(torch.equal(w, torch.full_like(w, 1 / 9)) for w in weights)


def test_user_mixer_is_counted_as_a_plain_module():
    model = timm.create_model('resnet26_dw_k7', mixer='box', kernel_size=5).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224))
    assert count_macs(model) == counter.get_total_flops() // 2
    assert not get_mixer('box').window_op


def test_user_mixer_works_with_timm_features():
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for feature_cls in (None, 'fx'):  # FX treats every registered mixer as a leaf
        torch.manual_seed(0)
        feat = timm.create_model('resnet26_dw_k7', mixer='box', kernel_size=5, features_only=True, feature_cls=feature_cls)
        outs.append(feat.eval()(x))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_registry_lists_and_refuses():
    assert list_mixers()[:len(MIXERS)] == MIXERS and {'box', 'box_timm_init'} <= set(list_mixers())
    assert set(MIXERS) == {'conv', 'dw', 'cada', 'position', 'local'}

    class Other(nn.Module):
        pass

    with pytest.raises(ValueError, match="'cada' is already registered"):
        timm_cada.register_mixer('cada', Other)
    with pytest.raises(ValueError, match="'box' is already registered"):
        timm_cada.register_mixer('box', Other)
    with pytest.raises(ValueError, match="BoxMixer is already registered as 'box'"):
        timm_cada.register_mixer('box2', BoxMixer)
    with pytest.raises(ValueError, match='unknown traits'):
        timm_cada.register_mixer('other', Other, needs_gpu=True)
    with pytest.raises(ValueError, match='init must be one of keep, reset, timm'):
        timm_cada.register_mixer('other', Other, init='zeros')
    with pytest.raises(ValueError, match='fixed_input_size=True needs feat_size=True'):
        timm_cada.register_mixer('other', Other, fixed_input_size=True)
    with pytest.raises(ValueError, match='nn.Module subclass'):
        timm_cada.register_mixer('other', lambda *a: None)
    assert 'other' not in list_mixers()
    with pytest.raises(ValueError, match="mixer must be one of .*box.*got 'unknown'"):
        timm.create_model('resnet26_dw_k7', mixer='unknown')


def test_traits_of_the_package_mixers():
    """What the model, its init and the MAC counter read, declared at each registration."""
    traits = {n: get_mixer(n) for n in MIXERS}
    assert [n for n, s in traits.items() if s.feat_size] == ['position', 'local']
    assert [n for n, s in traits.items() if s.fixed_input_size] == ['local']
    assert [n for n, s in traits.items() if s.window_op] == ['cada', 'position', 'local']
    assert {n: s.init for n, s in traits.items()} == dict(conv='timm', dw='reset', cada='reset', position='reset',
                                                          local='reset')
    assert [n for n, s in traits.items() if s.grouped] == ['conv']


def test_ablate_and_train_a_user_mixer(tmp_path):
    """train/ablate.py runs train/train.py; both import the user's module (--device-modules)."""
    data = make_image_folder(tmp_path / 'data', per_class=(4, 2))
    out = tmp_path / 'runs'
    tiny = TINY[2:TINY.index('--model-kwargs')]  # TINY without its --model, --model-kwargs and --device-modules
    cmd = [sys.executable, str(REPO / 'train' / 'ablate.py'), '--models', 'resnet26_dw_k3', '--data-dir', str(data),
           '--output', str(out), '--', '--epochs', '1', *tiny, '--model-kwargs', 'mixer=box', 'kernel_size=5',
           'channels=(16,32,64,128)', '--device-modules', 'timm_cada', 'user_mixers']
    env = dict(SUBPROCESS_ENV, PYTHONPATH=str(REPO / 'tests'))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = read_checkpoint(out / 'resnet26_dw_k3' / 'last.pth.tar')
    assert ckpt['model_kwargs']['mixer'] == 'box' and ckpt['model_kwargs']['kernel_size'] == 5
    assert ckpt['state_dict']['layer1.0.conv2.conv.weight'].shape == (16, 1, 5, 5)
    with open(out / 'ablation.csv') as f:
        (row,) = list(csv.DictReader(f))
    assert row['model'] == 'resnet26_dw_k3' and 0 <= float(row['top-1']) <= 100
