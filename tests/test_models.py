""" Every registered model behaves like a timm model: forward/backward, features, intermediates,
classifier reset, gradient checkpointing, channels_last, bf16 autocast, TorchScript and FX. """
import copy

import pytest
import timm
import torch

import timm_cada
from timm_cada.models import NoPretrainedWeightsError
from helpers import FAMILIES

SIZE = 32


def expected_names():
    names = set()
    for depth in (26, 50):
        for k in (3, 5, 7, 9, 11, 13):
            names |= {f'resnet{depth}_dw_k{k}', f'resnet{depth}_cada_k{k}'}
        for ab in ('ca3', 'ca7', 'b2', 'b4', 'b16', 'free', 'rpe', 'dsconv3', 'dsdw3'):
            names.add(f'resnet{depth}_cada_k7_{ab}')
        names |= {f'resnet{depth}_position_k7', f'resnet{depth}_local_k7'}
    return names | {'resnet50_cada'}


MODELS = timm.list_models(module='resnet_cada')

# The small-input stem (3x3 stride 1, no max-pool) at the study's quarter width, over every code path of the
# stem and the feature-size mixers: (name, kwargs, expected feature channels, expected reductions)
SMALL_STEM = dict(small_stem=True, channels=(16, 32, 64, 128))
CASES = [(name, {}, [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]) for name in MODELS] + [
    (name, SMALL_STEM, [64, 64, 128, 256, 512], [1, 1, 2, 4, 8])
    for name in ('resnet26_cada_k7', 'resnet26_dw_k13', 'resnet26_position_k7', 'resnet26_local_k7',
                 'resnet26_cada_k7_dsconv3')]
# The core tests (`-m core`, also run against the oldest supported timm) take one model per mixer family.
CORE = pytest.mark.core
PARAMS = [pytest.param(case, marks=CORE if case[0] in FAMILIES else ()) for case in CASES]


def create(name, **kwargs):
    if 'local' in name:  # locally connected kernels exist for one resolution only
        kwargs.setdefault('img_size', SIZE)
    return timm.create_model(name, **kwargs)


def images(n=2, size=SIZE, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@CORE
def test_registry():
    assert set(MODELS) == expected_names()
    assert len(timm.list_models('resnet50_cada*')) == 1 + 6 + 9
    assert timm.list_models('resnet50_dw_k13') == ['resnet50_dw_k13']


# ---------------------------------------------------------------------------------- the timm contract
# One test per capability, each over every model (as timm's own tests/test_models.py does). The module-scoped
# fixture builds each model once (pytest groups the tests by model), and every test takes a fresh copy of it.

@pytest.fixture(scope='module', params=PARAMS, ids=lambda c: c[0] + ('-small_stem' if c[1] else ''))
def built(request):
    """(name, the model with every parameter that starts at zero moved off it, so the mixers and the
    zero-initialised last norms of the blocks count in every output; its features_only twin; the case)."""
    name, kwargs = request.param[:2]
    torch.manual_seed(0)
    model = create(name, num_classes=10, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.add_(torch.randn_like(p) * 0.1)
    feat = create(name, features_only=True, **kwargs)
    feat.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('fc.')})
    return name, model, feat, request.param


@pytest.fixture
def model(built):
    return copy.deepcopy(built[1])


@pytest.fixture
def eval_model(model):
    return model.eval()


def test_model_forward_backward(model):
    """Forward and backward: finite outputs, and every parameter gets a gradient."""
    out = model(images())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing[:5]}'


def test_model_grad_checkpointing(model):
    """Gradient checkpointing gives the gradients of the plain backward."""
    x = images()
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        model(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5, msg=n)


@torch.no_grad()
def test_model_features_only(built):
    feat = copy.deepcopy(built[2]).eval()
    _, _, channels, reductions = built[3]
    assert feat.feature_info.channels() == channels
    assert feat.feature_info.reduction() == reductions
    assert [tuple(m.shape[1:]) for m in feat(images())] == [
        (c, SIZE // r, SIZE // r) for c, r in zip(feat.feature_info.channels(), feat.feature_info.reduction())]


@torch.no_grad()
def test_model_forward_intermediates(built, eval_model):
    """forward_intermediates agrees with features_only and with forward_features."""
    x = images()
    maps = copy.deepcopy(built[2]).eval()(x)
    final, inter = eval_model.forward_intermediates(x)
    for a, b in zip(maps, inter):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(final, eval_model.forward_features(x))
    only = eval_model.forward_intermediates(x, indices=[4], intermediates_only=True)
    torch.testing.assert_close(only[0], maps[4])


@torch.no_grad()
def test_model_torchscript(eval_model):
    x = images()
    torch.testing.assert_close(torch.jit.script(eval_model)(x), eval_model(x))


@torch.no_grad()
def test_model_fx_feature_extraction(built):
    name, _, feat, (_, kwargs, _, _) = built
    x = images()
    fx = create(name, features_only=True, feature_cls='fx', **kwargs).eval()
    fx.load_state_dict({'graph_module.' + k: v for k, v in feat.state_dict().items()})
    for a, b in zip(fx(x), copy.deepcopy(feat).eval()(x)):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_model_bf16_autocast(eval_model):
    """bf16 autocast on CPU runs and stays close to fp32."""
    x = images()
    ref = eval_model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = eval_model(x)
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, f'bf16 autocast drifts {rel:.3f} from fp32'


@torch.no_grad()
def test_model_channels_last(eval_model):
    x = images()
    ref = eval_model(x)
    cl = eval_model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_model_reset_classifier(eval_model):
    x = images()
    eval_model.reset_classifier(5)
    assert eval_model(x).shape == (2, 5)
    eval_model.reset_classifier(0)
    assert eval_model(x).shape == (2, eval_model.num_features) and eval_model.num_features in (512, 2048) and eval_model.get_classifier() is eval_model.fc


# ------------------------------------------------------------------------------------------ the family

@CORE
@pytest.mark.parametrize('name', ['resnet50_cada_k7', 'resnet26_dw_k3', 'resnet50_local_k7'])
def test_pretrained_without_weights_fails(name):
    with pytest.raises(NoPretrainedWeightsError, match=name):
        timm.create_model(name, pretrained=True)


@CORE
@pytest.mark.parametrize('name', ['resnet50_cada_k7', 'resnet50_dw_k13', 'resnet50_cada_k7_dsconv3', 'resnet50_local_k7'])
def test_non_mixer_weights_match_timm_resnet50(name):
    """Every parameter outside the mixers has resnet50's name and shape, so resnet50 weights load into it."""
    ours = create(name).state_dict()
    ref = timm.create_model('resnet50').state_dict()
    shared = {k for k in ref if k in ours and ours[k].shape == ref[k].shape}
    mixer = {k for k in ref if '.conv2.' in k}
    assert set(ref) - mixer <= shared
    assert {k for k in ours if '.conv2.' not in k} == set(ref) - mixer
    if 'dsconv3' in name:  # the stride-2 blocks' dense 3x3 conv is resnet50's own conv2
        assert {'layer2.0.conv2.weight', 'layer3.0.conv2.weight', 'layer4.0.conv2.weight'} <= shared


@CORE
def test_variant_args_and_kwargs():
    m = timm.create_model('resnet26_cada_k7_rpe', mixer_args=dict(num_bases=4), num_classes=3, drop_path_rate=0.1)
    conv2 = m.layer1[0].conv2
    assert isinstance(conv2, timm_cada.Cada2d)
    assert conv2.rel_pos is not None and conv2.num_bases == 4 and conv2.kernel_size == 7
    assert m.fc.out_features == 3
    free = timm.create_model('resnet26_cada_k7_free').layer3[1].conv2
    assert free.identity_bases and free.num_bases == 49 and free.bases is None
    ds = timm.create_model('resnet26_cada_k7_dsdw3')
    assert isinstance(ds.layer2[0].conv2, timm_cada.DwConv2d) and ds.layer2[0].conv2.kernel_size == (3, 3)
    assert isinstance(ds.layer1[0].conv2, timm_cada.Cada2d) and isinstance(ds.layer2[1].conv2, timm_cada.Cada2d)
    assert timm.create_model('resnet50_cada').layer4[2].conv2.num_heads == 512 // 16
    pos = timm.create_model('resnet26_position_k7')
    assert [pos.layer1[0].conv2.feat_size, pos.layer4[0].conv2.feat_size] == [(56, 56), (7, 7)]


@CORE
def test_small_stem_keeps_the_imagenet_geometry_at_28px():
    """28 px through the small stem gives the stages 28/14/7/4 maps (224 px through timm's stem: 56/28/14/7),
    the mixers are sized for them, and the pretrained cfg (input and pool size) says so."""
    m = timm.create_model('resnet26_position_k7', small_stem=True, img_size=28, in_chans=1, num_classes=10)
    assert [m.layer1[0].conv2.feat_size, m.layer2[0].conv2.feat_size, m.layer4[0].conv2.feat_size] == [
        (28, 28), (14, 14), (4, 4)]
    assert (m.conv1.kernel_size, m.conv1.stride, m.conv1.in_channels) == ((3, 3), (1, 1), 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    assert m.pretrained_cfg['input_size'] == (1, 28, 28) and m.pretrained_cfg['pool_size'] == (4, 4)
    maps = timm.create_model('resnet26_cada_k7', small_stem=True, in_chans=1, features_only=True)(
        torch.randn(1, 1, 28, 28))
    assert [t.shape[-1] for t in maps] == [28, 28, 14, 7, 4]
    # the new stem conv has timm's init (He-normal over fan-out = 64 * 3 * 3), not PyTorch's default
    std = timm.create_model('resnet50_cada_k7', small_stem=True).conv1.weight.std().item()
    assert abs(std / (2 / (64 * 9)) ** 0.5 - 1) < 0.1, std


@CORE
def test_in_chans_and_pooling():
    m = timm.create_model('resnet26_cada_k5', in_chans=1, global_pool='max', num_classes=2).eval()
    assert m(torch.randn(1, 1, 48, 40)).shape == (1, 2)


@CORE
def test_local_model_names_the_expected_size():
    m = timm.create_model('resnet26_local_k7')
    assert m.pretrained_cfg['fixed_input_size']
    with pytest.raises(ValueError, match=r'56x56 output .*got input 16x16'):
        m(torch.randn(1, 3, 64, 64))


@CORE
@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=4), 'kernel_size'),
    (dict(mixer='attention'), 'mixer must be one of'),
    (dict(ds_mixer='maxpool'), 'ds_mixer'),
    (dict(mixer_args=dict(num_bases=99)), 'num_bases'),
    (dict(mixer_args=dict(head_dim=7)), 'head_dim'),
    (dict(mixer_args=dict(bases=4)), r"mixer_args \['bases'\] not accepted"),
    (dict(small_stem=True, stem_type='deep'), r"small_stem=True needs stem_type='' and output_stride=32"),
    (dict(small_stem=True, output_stride=16), r'small_stem=True needs .*output_stride=16'),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('resnet26_cada_k7', **kwargs)


def test_readme_zoo_table_is_current():
    """README's model table (python -m timm_cada.zoo) lists every registered model and no other."""
    from pathlib import Path

    from timm_cada.profile import count_params
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    section = readme.split('## Model zoo', 1)[1]
    rows = {line.split('|')[1].strip(): line.split('|')[4].strip()
            for line in section.splitlines() if line.startswith('| resnet')}
    assert set(rows) == set(MODELS)
    for name in ('resnet50_cada_k7', 'resnet26_local_k7', 'resnet50_cada_k7_ca7'):
        assert rows[name] == f'{count_params(timm.create_model(name)) / 1e6:.2f}', name


@CORE
def test_img_size_sets_the_data_config():
    """A model built for another resolution says so in its pretrained cfg, which data configs come from."""
    m = timm.create_model('resnet26_local_k7', img_size=(64, 48))
    assert m.pretrained_cfg['input_size'] == (3, 64, 48)
    assert timm.data.resolve_data_config(model=m)['input_size'] == (3, 64, 48)
    assert m(torch.randn(1, 3, 64, 48)).shape == (1, 1000)
    assert [m.layer1[0].conv2.feat_size, m.layer4[0].conv2.feat_size] == [(16, 12), (2, 2)]


@CORE
@pytest.mark.parametrize('name', ['resnet26_local_k7', 'resnet26_position_k7', 'resnet26_cada_k5'])
def test_output_stride_and_anti_aliasing(name):
    """Dilated stages (output_stride 16 / 8) and anti-aliased downsampling size every mixer correctly."""
    x = images()
    for kwargs, final in ((dict(output_stride=16), SIZE // 16), (dict(output_stride=8), SIZE // 8),
                          (dict(aa_layer=torch.nn.AvgPool2d), SIZE // 32)):
        m = create(name, **kwargs).eval()
        with torch.no_grad():
            assert m.forward_features(x).shape[-1] == final, kwargs


@CORE
def test_mixer_kernels_start_at_one_scale():
    """DW, CADA, position and local kernels share one init (He-normal over the k*k taps)."""
    torch.manual_seed(0)
    expected = (2 / 49) ** 0.5
    for name, attr in (('resnet50_dw_k7', 'weight'), ('resnet50_cada_k7', 'bases'),
                       ('resnet50_position_k7', 'bases'), ('resnet50_local_k7', 'weight')):
        m = timm.create_model(name)
        for layer in (m.layer1, m.layer4):
            kernels = getattr(layer[0].conv2, attr)
            if name.endswith('local_k7'):  # every position starts from the same kernel
                kernels = kernels[..., 0, 0]
            assert abs(kernels.std().item() / expected - 1) < 0.15, (name, kernels.std().item())  # >= 196 samples
