""" timm_cada.analysis: the kernels captured with hooks, the two metrics (exact zeros where the bias is strict,
on parameters moved off the init: a fresh CADA layer is a DW conv), receptive fields, the command and its
errors. """
import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_cada  # noqa: F401
from timm_cada import analysis
from timm_cada.layers import DwConv2d
from helpers import perturbed

SMALL = dict(channels=(16, 32, 64, 128), num_classes=3)
SIZE = 32


def small_model(name, size=SIZE, **kwargs):
    """A narrow model with every parameter moved off its init."""
    if 'local' in name or 'position' in name:
        kwargs.setdefault('img_size', size)
    return perturbed(timm.create_model(name, **SMALL, **kwargs)).eval()


def images(n=3, seed=0, size=SIZE):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('name,spatial,context', [
    ('resnet26_dw_k5', 'zero', 'zero'),
    ('resnet26_position_k7', 'positive', 'zero'),
    ('resnet26_local_k7', 'positive', 'zero'),
    ('resnet26_cada_k7', 'positive', 'positive'),
    ('resnet26_cada_k7_free', 'positive', 'positive'),
    ('resnet26_cada_k7_rpe', 'positive', 'positive'),
])
def test_metrics_are_exactly_zero_where_the_bias_is_strict(name, spatial, context):
    # 64 px: the last stage's maps are 2x2 (at 32 px one position, whose spatial variation is 0 for any mixer)
    captures = analysis.capture_kernels(small_model(name, 64), images(size=64))
    assert len(captures) == 8  # every bottleneck's mixer
    for layer, m in analysis.layer_metrics(captures, 3).items():
        for key, expected in (('spatial_variation', spatial), ('context_sensitivity', context)):
            value = m[key]
            assert 0.0 <= value <= 1.0, (layer, key, value)
            if expected == 'zero':
                assert value == 0.0, (layer, key, value)
            else:
                assert value > 1e-6, (layer, key, value)


def test_dense_conv_is_spatially_invariant_and_context_free():
    model = perturbed(timm.create_model('resnet26_cada_k7_dsconv3', **SMALL)).eval()
    captures = analysis.capture_kernels(model, images())
    dense = {n: c for n, c in captures.items() if c.mixer == 'conv'}
    assert len(dense) == 3  # the stride-2 blocks
    for c in dense.values():
        assert analysis.spatial_variation(c.kernels) == 0.0 and analysis.context_sensitivity(c.kernels, 3) == 0.0


def test_a_dw_layers_kernel_is_its_weight():
    model = small_model('resnet26_dw_k5')
    captures = analysis.capture_kernels(model, images(2))
    layer = model.layer2[0].conv2  # stride 2
    c = captures['layer2.0.conv2']
    assert c.module is layer and c.kernels.shape == (1, 32, 25, 4, 4)
    for i, j in ((0, 0), (1, 3), (3, 3)):
        assert torch.equal(c.kernels[0, :, :, i, j], layer.weight.reshape(32, 25))


def test_a_user_mixer_that_exposes_its_kernels_is_measured():
    import user_mixers  # noqa: F401  (registers 'box')
    model = small_model('resnet26_dw_k7', mixer='box', kernel_size=3)
    captures = analysis.capture_kernels(model, images())
    assert {c.mixer for c in captures.values()} == {'box'} and len(captures) == 8
    box = model.layer1[0].conv2
    expected = box.conv.weight.flatten(1) * box.gain.flatten()[:, None]
    assert torch.equal(captures['layer1.0.conv2'].kernels[0, :, :, 2, 3], expected)
    metrics = analysis.model_metrics(captures, 3)
    assert metrics['spatial_variation'] == 0.0 and metrics['context_sensitivity'] == 0.0


def test_cada_kernels_are_what_its_forward_applies():
    """The captured maps, applied by the reference operator, give the layer's output."""
    from timm_cada.ops.reference import pixel_filter_reference
    model = small_model('resnet26_cada_k7_rpe')
    x = images(2)
    inputs = {}
    layer = model.layer1[0].conv2
    handle = layer.register_forward_hook(lambda m, i, o: inputs.update(x=i[0], y=o))
    captures = analysis.capture_kernels(model, x)
    handle.remove()
    c = captures['layer1.0.conv2']
    assert c.base_weights.shape == (2, layer.num_heads, 8, SIZE // 4, SIZE // 4)
    y = pixel_filter_reference(inputs['x'], c.kernels, 7)
    torch.testing.assert_close(y, inputs['y'], rtol=1e-4, atol=1e-5)


def test_capture_leaves_the_forward_and_the_mode_unchanged():
    model = small_model('resnet26_cada_k7').train()
    x = images(2)
    with torch.no_grad():
        ref = model.eval()(x)
    model.train()
    analysis.capture_kernels(model, x)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref)


@pytest.mark.parametrize('k,dilation', [(3, 1), (5, 1), (7, 2)])
def test_receptive_field_of_one_dw_layer_is_its_window(k, dilation):
    layer = perturbed(DwConv2d(4, 4, k, dilation=dilation))
    x = torch.randn(1, 4, 21, 21)
    support = analysis.effective_receptive_field(layer, x) > 0
    rows, cols = np.nonzero(support.numpy())
    span = dilation * (k - 1) + 1
    assert support.sum() == k * k  # exactly the k x k taps
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (span, span)
    assert (rows.min() + rows.max()) / 2 == 10 and (cols.min() + cols.max()) / 2 == 10  # centred


def test_single_image_has_no_context_sensitivity():
    captures = analysis.capture_kernels(small_model('resnet26_cada_k7'), images(1, size=64))
    metrics = analysis.layer_metrics(captures, 1)
    assert all(m['context_sensitivity'] is None for m in metrics.values())
    assert all(m['spatial_variation'] > 0 for m in metrics.values())


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(('RGB', 'L', 'RGBA')):
        array = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
        path = tmp_path / f'img{i}.png'
        Image.fromarray(array).convert(mode).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def checkpoint(tmp_path):
    """A train.py-style checkpoint of a narrow resnet26_cada_k7 for 32 px inputs, off its init."""
    kwargs = dict(SMALL)
    model = perturbed(timm.create_model('resnet26_cada_k7', **kwargs))
    path = tmp_path / 'last.pth.tar'
    torch.save({'arch': 'resnet26_cada_k7', 'model_kwargs': {**kwargs, 'channels': list(kwargs['channels'])},
                'state_dict': model.state_dict(), 'args': {'img_size': SIZE, 'crop_pct': 1.0}}, path)
    return path


def test_command_writes_metrics_and_pictures(checkpoint, image_files, tmp_path):
    out = tmp_path / 'analysis'
    metrics = analysis.main(['--model', 'resnet26_cada_k7', '--checkpoint', str(checkpoint), '--image', *image_files,
                             '--out', str(out), '--erf', 'resnet26_dw_k7'])
    saved = json.loads((out / 'metrics.json').read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved['images'] == 3 and len(saved['layers']) == 8
    assert 0 < saved['spatial_variation'] <= 1 and 0 < saved['context_sensitivity'] <= 1
    assert saved['layers']['layer1.0.conv2']['kernels'] == [3, 1, 49, 8, 8]  # 32 px: the checkpoint's size
    names = set(saved['figures'])
    assert {'erf.png', 'attention_layer1_0_conv2.png', 'base_kernels_layer1_0_conv2.png',
            'dominant_base_layer1_0_conv2.png', 'base_kernels_layer4_1_conv2.png'} <= names
    for name in names:
        with Image.open(out / name) as img:
            img.verify()
            assert img.format == 'PNG'


def test_command_analyses_a_saved_model(checkpoint, image_files, tmp_path):
    """--model local-dir:FOLDER (save_local_dir's layout): its own weights and its training size (32 px)."""
    from timm_cada.load import load_model, save_local_dir
    model, data_args = load_model('resnet26_cada_k7', str(checkpoint))
    kwargs = torch.load(checkpoint, weights_only=True)['model_kwargs']
    save_local_dir(model, data_args, kwargs, str(tmp_path / 'saved'))
    from_checkpoint = analysis.main(['--model', 'resnet26_cada_k7', '--checkpoint', str(checkpoint), '--image',
                                     *image_files, '--out', str(tmp_path / 'a')])
    saved = analysis.main(['--model', f'local-dir:{tmp_path / "saved"}', '--image', *image_files, '--out',
                           str(tmp_path / 'b'), '--erf', f'local-dir:{tmp_path / "saved"}'])
    assert saved['spatial_variation'] == from_checkpoint['spatial_variation']
    assert saved['layers']['layer1.0.conv2']['kernels'] == [3, 1, 49, 8, 8] and saved['model'] == 'saved'


@pytest.mark.parametrize('argv,match', [
    (['--model', 'resnet26_cada_k77'], "unknown model 'resnet26_cada_k77'"),
    (['--model', 'local-dir:/no/such/folder'], "--model: cannot load local-dir:/no/such/folder: .*config.json"),
    (['--model', 'local-dir:/no/such/folder', '--checkpoint', 'CKPT'], '--checkpoint: .* brings its own weights'),
    (['--model', 'resnet26_dw_k7', '--checkpoint', 'CKPT'], "is a checkpoint of 'resnet26_cada_k7', not of --model "
                                                             "'resnet26_dw_k7'"),
    (['--model', 'resnet26_cada_k7', '--checkpoint', 'missing.pth'], 'missing.pth does not exist'),
    (['--model', 'resnet26_cada_k7', '--image', 'BAD'], 'cannot open .*bad.png as an image'),
    (['--model', 'resnet26_cada_k7', '--erf', 'resnet26_dw_k77'], "--erf: unknown model 'resnet26_dw_k77'"),
    (['--model', 'resnet26_cada_k7', '--erf', 'resnet26_dw_k7=CKPT'], "--erf: .* is a checkpoint of "
                                                                      "'resnet26_cada_k7', not of --erf"),
])
def test_bad_input_is_named(argv, match, checkpoint, image_files, tmp_path, capsys):
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image')
    argv = [a.replace('CKPT', str(checkpoint)) for a in argv]
    if '--image' in argv:
        argv[argv.index('BAD')] = str(bad)
    else:
        argv += ['--image', *image_files]
    with pytest.raises(SystemExit) as e:
        analysis.main(argv + ['--out', str(tmp_path / 'out')])
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)
