""" The CADA operators against an unfold reference written here, and the special cases of docs/design.md,
in float64. Every backend named in timm_cada.ops is held to the same numbers. """
import pytest
import torch
import torch.nn.functional as F

from timm_cada.ops import CADA_IMPLS, PIXEL_FILTER_IMPLS, cada_filter, filter_output_size, pixel_filter
from helpers import OP_CASES, OP_TOL, op_inputs, split_case

DT = torch.float64


def unfold_pixel_filter(x, attn, k, stride=1, dilation=1):
    """Test-only reference: materialise every window with F.unfold, then weight it."""
    N, C, H, W = x.shape
    G = attn.shape[1]
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    cols = F.unfold(x, k, dilation=dilation, padding=dilation * (k // 2), stride=stride)
    cols = cols.view(N, G, C // G, k * k, Ho, Wo)
    return (cols * attn.view(attn.shape[0], G, 1, k * k, Ho, Wo)).sum(3).view(N, C, Ho, Wo)


def unfold_cada(x, alpha, bases, rel_pos, k, stride=1, dilation=1):
    G, B = bases.shape[:2]
    attn = torch.einsum('ngbhw,gbd->ngdhw', alpha, bases.reshape(G, B, k * k))
    if rel_pos is not None:
        attn = attn + rel_pos.reshape(1, G, k * k, 1, 1)
    return unfold_pixel_filter(x, attn, k, stride, dilation)


def dw_conv(x, kernel_per_head, stride=1, dilation=1):
    """Depthwise conv with one (k, k) kernel per head, shared by the head's channels."""
    C = x.shape[1]
    G, k, _ = kernel_per_head.shape
    w = kernel_per_head.repeat_interleave(C // G, dim=0).unsqueeze(1)
    return F.conv2d(x, w, stride=stride, padding=dilation * (k // 2), dilation=dilation, groups=C)


# The triton backend runs in Triton's interpreter here, which takes seconds per case: tests/test_backends.py
# holds it to the reference on every case, and the reference is held to unfold here.
FAST_CADA_IMPLS = [i for i in CADA_IMPLS if i != 'triton']
FAST_PIXEL_FILTER_IMPLS = [i for i in PIXEL_FILTER_IMPLS if i != 'triton']


@pytest.mark.parametrize('impl', FAST_CADA_IMPLS)
@pytest.mark.parametrize('case', OP_CASES, ids=str)
@pytest.mark.parametrize('with_rel_pos', [False, True])
def test_cada_matches_unfold(impl, case, with_rel_pos):
    k, stride, dilation, kw = split_case(case)
    x, alpha, bases, rel_pos, _ = op_inputs(k, **kw)
    rel_pos = rel_pos if with_rel_pos else None
    out = cada_filter(x, alpha, bases, rel_pos, stride, dilation, impl=impl)
    torch.testing.assert_close(out, unfold_cada(x, alpha, bases, rel_pos, k, stride, dilation), **OP_TOL)


@pytest.mark.parametrize('impl', FAST_PIXEL_FILTER_IMPLS)
@pytest.mark.parametrize('case', OP_CASES, ids=str)
def test_pixel_filter_matches_unfold(impl, case):
    k, stride, dilation, kw = split_case(case)
    x, _, _, _, attn = op_inputs(k, **kw)
    out = pixel_filter(x, attn, k, stride, dilation, impl=impl)
    torch.testing.assert_close(out, unfold_pixel_filter(x, attn, k, stride, dilation), **OP_TOL)


@pytest.mark.core
@pytest.mark.parametrize('impl', CADA_IMPLS)
def test_one_base_fixed_alpha_is_dw_conv(impl):
    x, _, bases, _, _ = op_inputs(5, B=1)
    alpha = torch.ones(2, 2, 1, 9, 7, dtype=DT)
    torch.testing.assert_close(cada_filter(x, alpha, bases, impl=impl), dw_conv(x, bases[:, 0]), **OP_TOL)


@pytest.mark.parametrize('impl', CADA_IMPLS)
@pytest.mark.parametrize('stride', [1, 2])
def test_constant_alpha_is_dw_conv_with_summed_kernel(impl, stride):
    x, _, bases, _, _ = op_inputs(5, B=4)
    a = torch.randn(1, 2, 4, 1, 1, dtype=DT)
    Ho, Wo = filter_output_size(9, 5, stride), filter_output_size(7, 5, stride)
    alpha = a.expand(2, 2, 4, Ho, Wo)
    summed = (a[0, :, :, :, :, None] * bases.unsqueeze(-1)).sum(1)[..., 0]  # (G, k, k)
    torch.testing.assert_close(
        cada_filter(x, alpha, bases, stride=stride, impl=impl), dw_conv(x, summed, stride), **OP_TOL)


@pytest.mark.parametrize('impl', CADA_IMPLS)
def test_rel_pos_alone_is_dw_conv(impl):
    x, alpha, bases, rel_pos, _ = op_inputs(3)
    out = cada_filter(x, torch.zeros_like(alpha), bases, rel_pos, impl=impl)
    torch.testing.assert_close(out, dw_conv(x, rel_pos), **OP_TOL)


@pytest.mark.parametrize('impl', CADA_IMPLS)
@pytest.mark.parametrize('k,dilation', [(3, 1), (5, 1), (3, 2)])
def test_strided_equals_subsampled_stride_one(impl, k, dilation):
    x, alpha, bases, rel_pos, _ = op_inputs(k, H=12, W=10, dilation=dilation)
    full = cada_filter(x, alpha, bases, rel_pos, 1, dilation, impl=impl)
    strided = cada_filter(x, alpha[..., ::2, ::2], bases, rel_pos, 2, dilation, impl=impl)
    torch.testing.assert_close(strided, full[..., ::2, ::2], **OP_TOL)


@pytest.mark.core
@pytest.mark.parametrize('impl', CADA_IMPLS)
def test_identity_bases_express_any_per_pixel_kernel(impl):
    """With the k*k one-hot bases, alpha *is* the per-pixel kernel: any kernel map can be expressed."""
    k, G = 3, 2
    x, _, _, _, _ = op_inputs(k, G=G)
    kernels = torch.randn(2, G, k * k, 9, 7, dtype=DT)  # arbitrary per-pixel, per-head kernels
    identity = torch.eye(k * k, dtype=DT).view(1, k * k, k, k).expand(G, k * k, k, k)
    out = cada_filter(x, kernels, identity, impl=impl)
    torch.testing.assert_close(out, unfold_pixel_filter(x, kernels, k), **OP_TOL)
    torch.testing.assert_close(pixel_filter(x, kernels, k), out, **OP_TOL)


@pytest.mark.core
def test_shape_errors():
    x, alpha, bases, _, _ = op_inputs(3)
    with pytest.raises(ValueError, match='alpha'):
        cada_filter(x, alpha, bases[:, :2], impl='reference')  # alpha has 3 bases, bases 2
    with pytest.raises(ValueError, match='heads'):
        cada_filter(x[:, :7], alpha, bases)
    with pytest.raises(ValueError, match='impl'):
        cada_filter(x, alpha, bases, impl='cuda_magic')
    with pytest.raises(ValueError, match='attn'):
        pixel_filter(x, alpha, 3)  # 3 taps per pixel, a 3x3 window needs 9
    attn = torch.randn(2, 2, 9, 9, 7, dtype=DT)
    with pytest.raises(ValueError, match='impl'):
        pixel_filter(x, attn, 3, impl='cuda_magic')
