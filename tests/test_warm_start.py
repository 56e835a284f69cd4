""" Warm start from timm resnet weights: every non-mixer tensor loads, the mixers stay at init. """
import hashlib

import pytest
import safetensors.torch
import torch

import timm
import timm_cada  # noqa: F401
from timm_cada.warm_start import warm_start

from helpers import lay_out_hf_cache


def _mixer_keys(keys):
    return {k for k in keys if '.conv2.' in k}


def test_resnet50_state_dict_loads_every_non_mixer_weight(tmp_path):
    src = timm.create_model('resnet50').state_dict()
    path = tmp_path / 'resnet50.pth'
    torch.save(src, path)
    model = timm.create_model('resnet50_cada_k7')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = warm_start(model, path)

    ours = set(before)
    resnet_mixers = {f'layer{i + 1}.{j}.conv2.weight' for i, n in enumerate((3, 4, 6, 3)) for j in range(n)}
    assert _mixer_keys(src) == resnet_mixers
    assert set(report['loaded']) == set(src) - resnet_mixers  # stem, 1x1 convs, norms, shortcuts, head
    assert set(report['missing']) == _mixer_keys(ours) and ours - set(report['loaded']) == _mixer_keys(ours)
    assert set(report['unexpected']) == resnet_mixers and report['mismatched'] == {}
    after = model.state_dict()
    assert all(torch.equal(after[k], src[k]) for k in report['loaded'])
    assert all(torch.equal(after[k], before[k]) for k in report['missing'])


def test_shape_mismatches_are_reported_and_left_at_init(tmp_path):
    src = timm.create_model('resnet26', num_classes=10).state_dict()
    path = tmp_path / 'resnet26.safetensors'
    safetensors.torch.save_file(src, path)
    model = timm.create_model('resnet26_dw_k3')  # depthwise conv2 has the name of resnet's conv2, not its shape
    fc_before = model.fc.weight.clone()
    report = warm_start(model, path)
    assert set(report['mismatched']) == _mixer_keys(src) | {'fc.weight', 'fc.bias'}
    assert report['mismatched']['layer1.0.conv2.weight'] == ((64, 64, 3, 3), (64, 1, 3, 3))
    assert report['mismatched']['fc.weight'] == ((10, 2048), (1000, 2048))
    assert set(report['loaded']) == set(src) - set(report['mismatched']) and report['unexpected'] == []
    assert torch.equal(model.fc.weight, fc_before)


def test_training_checkpoint_uses_ema_weights(tmp_path):
    model_sd = timm.create_model('resnet26').state_dict()
    ema_sd = {k: v + 1 if v.is_floating_point() else v for k, v in model_sd.items()}
    path = tmp_path / 'last.pth.tar'
    torch.save(dict(arch='resnet26', model_kwargs={}, epoch=0, state_dict=model_sd, state_dict_ema=ema_sd,
                    optimizer={}, metric=None, args={}, version=2), path)
    model = timm.create_model('resnet26_cada_k7')
    warm_start(model, path)
    assert torch.equal(model.conv1.weight, ema_sd['conv1.weight'])


def test_timm_model_name_with_pretrained_weights(tmp_path, monkeypatch):
    """A timm name downloads through timm's hub path: served here from a local cache, offline."""
    import huggingface_hub.constants
    hub_id = timm.models.get_pretrained_cfg('resnet26').hf_hub_id
    files = tmp_path / 'files'
    files.mkdir()
    src = timm.create_model('resnet26').state_dict()
    safetensors.torch.save_file(src, files / 'model.safetensors')
    cache = tmp_path / 'hub'
    lay_out_hf_cache(cache, hub_id, files, hashlib.sha1(b'resnet26').hexdigest())
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    model = timm.create_model('resnet26_cada_k7')
    report = warm_start(model, 'resnet26')
    assert set(report['loaded']) == set(src) - _mixer_keys(src)
    assert torch.equal(model.layer4[1].conv3.weight, src['layer4.1.conv3.weight'])


def test_bad_sources(tmp_path):
    model = timm.create_model('resnet26_dw_k3')
    with pytest.raises(FileNotFoundError, match='not found'):
        warm_start(model, tmp_path / 'missing.pth')
    with pytest.raises(ValueError, match='neither an existing checkpoint file nor a timm model name'):
        warm_start(model, 'no_such_model_name')
