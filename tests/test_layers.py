""" The mixer modules: gradcheck, init behaviour, resolution handling, memory shape, bad arguments. """
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from timm_cada.layers import MIXERS, Cada2d, DwConv2d, Local2d, create_mixer
from timm_cada.ops import cada_filter, pixel_filter
from helpers import perturbed

DT = torch.float64
pytestmark = pytest.mark.core  # also run against the oldest supported timm

# every mixer, and the variants of cada that take other code paths
MIXER_CASES = {
    'conv': dict(name='conv'),
    'dw': dict(name='dw'),
    'cada': dict(name='cada', num_bases=3, head_dim=4),
    'cada_rpe_ca3_sigmoid': dict(name='cada', num_bases=2, head_dim=4, rel_pos=True, ca_kernel_size=3, ca_norm='sigmoid'),
    'cada_free': dict(name='cada', identity_bases=True, num_bases=None, head_dim=4, rel_pos=True),
    'cada_no_reduction': dict(name='cada', num_bases=2, head_dim=8, ca_reduction=None, ca_norm='none'),
    'position': dict(name='position', num_bases=3, head_dim=4, feat_size=(6, 5)),
    'local': dict(name='local', head_dim=4, feat_size=(6, 5)),
}


def build(case, stride=1, chs=8, k=3, **extra):
    kwargs = dict(MIXER_CASES[case])
    name = kwargs.pop('name')
    if stride == 2 and 'feat_size' in kwargs:
        kwargs['feat_size'] = (3, 3)
    # moved off the init (zero last CA layer, zero logits) so every path is exercised
    return perturbed(create_mixer(name, chs, chs, k, stride=stride, **kwargs, **extra).to(DT))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('case', list(MIXER_CASES))
def test_gradcheck(case, stride):
    torch.manual_seed(0)
    m = build(case, stride).eval()  # eval: BatchNorm in the CA generator must not be batch-dependent
    x = torch.randn(2, 8, 6, 5, dtype=DT, requires_grad=True)
    params = [p for p in m.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: m(x), (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)


def test_all_mixers_covered():
    assert {c['name'] for c in MIXER_CASES.values()} == set(MIXERS)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize('case', ['cada', 'cada_free', 'position', 'local'])
def test_no_kkc_blowup(case):
    """No op in forward or backward produces a tensor of k*k activations (an unfold blow-up)."""
    k, chs, hw = 7, 64, 12
    kwargs = dict(MIXER_CASES[case])
    name = kwargs.pop('name')
    kwargs['head_dim'] = 16
    if 'feat_size' in kwargs:
        kwargs['feat_size'] = hw
    if kwargs.get('num_bases'):
        kwargs['num_bases'] = 8
    m = create_mixer(name, chs, chs, k, **kwargs)
    x = torch.randn(2, chs, hw, hw, requires_grad=True)
    act = x.numel()
    with MaxNumel() as rec:
        m(x).sum().backward()
    assert rec.max_numel <= 9 * act, f'{case}: largest tensor has {rec.max_numel / act:.1f}x the activation'
    assert rec.max_numel < k * k * act / 4


@pytest.mark.parametrize('stride', [1, 2])
def test_fresh_cada_is_dw_conv_of_mean_base(stride):
    """The CA generator's last conv starts at zero: softmax gives alpha = 1/B, a DW conv of the mean base."""
    m = Cada2d(16, 16, 5, stride=stride, num_bases=4, head_dim=8).double().eval()
    x = torch.randn(2, 16, 9, 9, dtype=DT)
    mean_kernel = m.bases.mean(1).repeat_interleave(8, dim=0).unsqueeze(1)  # (C, 1, k, k)
    torch.testing.assert_close(m(x), F.conv2d(x, mean_kernel, stride=stride, padding=2, groups=16))


def test_cada_module_matches_operator():
    m = build('cada_rpe_ca3_sigmoid').eval()
    x = torch.randn(2, 8, 7, 6, dtype=DT)
    alpha = m.ca_params(x)
    assert alpha.shape == (2, 2, 2, 7, 6)
    torch.testing.assert_close(m(x), cada_filter(x, alpha, m.bases, m.rel_pos, impl='reference'))


def test_cada_free_alpha_is_the_attention_map():
    m = build('cada_free').eval()
    x = torch.randn(2, 8, 7, 6, dtype=DT)
    alpha = m.ca_params(x)
    assert m.bases is None and alpha.shape == (2, 2, 9, 7, 6)
    torch.testing.assert_close(alpha.sum(2), torch.ones(2, 2, 7, 6, dtype=DT))  # softmax over the window
    attn = alpha + m.rel_pos.reshape(1, 2, 9, 1, 1)
    torch.testing.assert_close(m(x), pixel_filter(x, attn, 3))


def test_position_any_resolution():
    m = build('position').eval()
    x = torch.randn(1, 8, 6, 5, dtype=DT)
    alpha = m.ca_params(6, 5)
    assert alpha.shape == (1, 2, 3, 6, 5)
    torch.testing.assert_close(m(x), cada_filter(x, alpha, m.bases, impl='reference'))
    # another resolution resizes the row / column logits instead of failing
    big = torch.randn(2, 8, 12, 10, dtype=DT)
    assert m(big).shape == (2, 8, 12, 10)
    assert m.ca_params(12, 10).shape == (1, 2, 3, 12, 10)
    # alpha depends on position, not on the input: it has no batch dimension, and positions differ
    assert not torch.allclose(alpha[..., 0, 0], alpha[..., 3, 2])
    # at another size, the row and column logits are linearly resized
    row = F.interpolate(m.row_logits, size=12, mode='linear', align_corners=False)
    col = F.interpolate(m.col_logits, size=10, mode='linear', align_corners=False)
    torch.testing.assert_close(m.ca_params(12, 10)[0], (row[..., :, None] + col[..., None, :]).softmax(1))


def test_local_fixed_resolution():
    m = build('local', stride=2).eval()
    assert m(torch.randn(1, 8, 6, 5, dtype=DT)).shape == (1, 8, 3, 3)
    with pytest.raises(ValueError, match=r'3x3 output \(input 6x6 at stride 2\), got input 8x8'):
        m(torch.randn(1, 8, 8, 8, dtype=DT))


def test_local_starts_spatially_invariant():
    m = Local2d(8, 8, 3, head_dim=4, feat_size=5)
    assert torch.equal(m.weight, m.weight[:, :, :1, :1].expand_as(m.weight))


@pytest.mark.parametrize('kwargs,match', [
    (dict(name='cada', kernel_size=4), 'kernel_size'),
    (dict(name='dw', kernel_size=0), 'kernel_size'),
    (dict(name='cada', num_bases=0), 'num_bases'),
    (dict(name='cada', num_bases=10), 'num_bases'),
    (dict(name='position', num_bases=50, feat_size=4), 'num_bases'),
    (dict(name='cada', head_dim=5), 'head_dim'),
    (dict(name='local', head_dim=3, feat_size=4), 'head_dim'),
    (dict(name='cada', ca_kernel_size=2), 'ca_kernel_size'),
    (dict(name='cada', ca_norm='relu'), 'ca_norm'),
    (dict(name='cada', ca_reduction=0), 'ca_reduction'),
    (dict(name='cada', identity_bases=True, num_bases=4), 'num_bases'),
    (dict(name='cada', impl='cuda_magic'), 'impl'),
    (dict(name='cada', out_chs=32), 'out_chs'),
    (dict(name='cada', stride=0), 'stride'),
    (dict(name='position'), 'feat_size'),
    (dict(name='local', feat_size=(4, 0)), 'feat_size'),
    (dict(name='transformer'), 'mixer must be one of'),
])
def test_bad_arguments(kwargs, match):
    kwargs = dict(kwargs)
    name = kwargs.pop('name')
    args = dict(in_chs=16, out_chs=kwargs.pop('out_chs', 16), kernel_size=kwargs.pop('kernel_size', 3))
    with pytest.raises(ValueError, match=match):
        create_mixer(name, **args, **kwargs)


def test_dw_is_plain_depthwise_conv():
    m = DwConv2d(16, 16, 5, stride=2)
    assert (m.groups, m.padding, m.stride, tuple(m.weight.shape)) == (16, (2, 2), (2, 2), (16, 1, 5, 5))
