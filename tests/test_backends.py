""" The fast operator backends against the float64 reference: values and gradients for every
stride / dilation / rel_pos / broadcast case, gradcheck, batch chunking, channels_last, bf16
autocast, TorchScript, FX, torch.compile, CUDA (skipped without a GPU) and the benchmark script's
dry run. The 'triton' backend runs in Triton's interpreter here (tests/conftest.py sets TRITON_INTERPRET=1
without a GPU); the 'native' backend's C kernels are built with this machine's compiler. Speed is measured by benchmarks/bench.py, never here. """
import os
import subprocess

import pytest
import timm
import torch

from timm_cada.layers import Cada2d, Local2d, Position2d, set_backend
from timm_cada.ops import CADA_IMPLS, PIXEL_FILTER_IMPLS, cada_filter, choose_backend, filter_output_size, pixel_filter
from timm_cada.ops import dense, functional, native, taps, triton_fused
from timm_cada.ops.reference import cada_reference, pixel_filter_reference
from helpers import OP_CASES, OP_TOL, grads, load_script, op_inputs, perturbed, split_case

# Every backend on every case, with and without rel_pos; the triton backend, which runs in Triton's interpreter
# here (seconds per case), without rel_pos on the first three cases only.
CADA_GRAD_CASES = [pytest.param(impl, case, rel, id=f'{impl}-{case}-{rel}') for impl in CADA_IMPLS
                   for i, case in enumerate(OP_CASES) for rel in (False, True) if rel or impl != 'triton' or i < 3]


@pytest.mark.parametrize('impl,case,with_rel_pos', CADA_GRAD_CASES)
def test_cada_values_and_grads_match_reference(impl, case, with_rel_pos):
    k, stride, dilation, kw = split_case(case)
    x, alpha, bases, rel_pos, _ = op_inputs(k, **kw)
    rel_pos = rel_pos if with_rel_pos else None
    inputs = [t.requires_grad_() for t in (x, alpha, bases) + ((rel_pos,) if with_rel_pos else ())]
    out = cada_filter(x, alpha, bases, rel_pos, stride, dilation, impl=impl)
    ref = cada_reference(x, alpha, bases, rel_pos, stride, dilation)
    torch.testing.assert_close(out, ref, **OP_TOL)
    for g, g_ref in zip(grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


@pytest.mark.parametrize('impl', PIXEL_FILTER_IMPLS)
@pytest.mark.parametrize('case', OP_CASES, ids=str)
def test_pixel_filter_values_and_grads_match_reference(impl, case):
    k, stride, dilation, kw = split_case(case)
    x, _, _, _, attn = op_inputs(k, **kw)
    inputs = [x.requires_grad_(), attn.requires_grad_()]
    out = pixel_filter(x, attn, k, stride, dilation, impl=impl)
    ref = pixel_filter_reference(x, attn, k, stride, dilation)
    torch.testing.assert_close(out, ref, **OP_TOL)
    for g, g_ref in zip(grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


@pytest.fixture
def fresh_plans():
    """The dense backend caches its plans: start and end with none."""
    dense._plan.cache_clear()
    yield
    dense._plan.cache_clear()


@pytest.mark.parametrize('h', [1, 2, 3])
@pytest.mark.parametrize('case', OP_CASES, ids=str)
def test_dense_bands_match_reference(monkeypatch, fresh_plans, case, h):
    """The dense backend splits larger maps into bands of output rows (the test maps are one band by
    default): force bands of h rows, the last one shorter where h does not divide Ho, and chunks of four
    kernel-map rows (of six), so that the full bands of a chunk follow the short band of the one before,
    and the last chunk is shorter."""
    monkeypatch.setattr(dense, '_band_height', lambda *args: h)
    monkeypatch.setattr(dense, '_rows_per_chunk', lambda *args: 4)
    k, stride, dilation, kw = split_case(case)
    x, alpha, bases, rel_pos, attn = op_inputs(k, **{**kw, 'N': 3})
    assert len(dense._plan(x.shape[-2], x.shape[-1], k, stride, dilation).bands) == -(-alpha.shape[-2] // h)
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos, attn)]
    out = dense.cada_dense(x, alpha, bases, rel_pos, stride, dilation) + dense.pixel_filter_dense(x, attn, k, stride, dilation)
    ref = cada_reference(x, alpha, bases, rel_pos, stride, dilation) + pixel_filter_reference(x, attn, k, stride, dilation)
    torch.testing.assert_close(out, ref, **OP_TOL)
    for g, g_ref in zip(grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


@pytest.mark.parametrize('case', [dict(k=3), dict(k=3, stride=2, dilation=2, H=10, W=9), dict(k=5, batch1=True)],
                         ids=str)
def test_gradcheck(case):
    k, stride, dilation, kw = split_case(case)
    x, alpha, bases, rel_pos, attn = op_inputs(k, **{**dict(N=2, C=4, H=6, W=5, G=2, B=2), **kw})
    for t in (x, alpha, bases, rel_pos, attn):
        t.requires_grad_()
    # the interpreter takes a fraction of a second per Triton kernel: the triton backend gets gradcheck's fast
    # mode (Jacobian-vector products instead of one forward per input element), on the first case (its
    # gradients meet the reference's on every case above)
    backends = [(taps, taps.cada_taps, taps.pixel_filter_taps, False),
                (dense, dense.cada_dense, dense.pixel_filter_dense, False),
                (native, native.cada_native, native.pixel_filter_native, False)]
    if case == dict(k=3):
        backends.append((triton_fused, triton_fused.cada_triton, triton_fused.pixel_filter_triton, True))
    for backend, cada, pf, fast in backends:
        assert torch.autograd.gradcheck(lambda *a: cada(*a, stride, dilation), (x, alpha, bases, rel_pos),
                                        fast_mode=fast), backend
        assert torch.autograd.gradcheck(lambda *a: pf(*a, k, stride, dilation), (x, attn), fast_mode=fast), backend


@pytest.mark.parametrize('batch1', [False, True])
def test_batch_chunks_match_one_chunk(monkeypatch, batch1):
    """Large batches run in chunks; force several (of uneven size) and compare with one."""
    x, alpha, bases, rel_pos, attn = op_inputs(5, N=5, stride=2, batch1=batch1)
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos, attn)]

    def run():
        ys = [taps.cada_taps(x, alpha, bases, rel_pos, 2), taps.pixel_filter_taps(x, attn, 5, 2),
              dense.cada_dense(x, alpha, bases, rel_pos, 2), dense.pixel_filter_dense(x, attn, 5, 2)]
        return ys + list(grads(sum(ys), inputs))

    with monkeypatch.context() as m:  # everything in one chunk
        m.setattr(taps, '_chunks', lambda n, per_sample: [(0, n)])
        m.setattr(dense, '_rows_per_chunk', lambda *args: 10 ** 9)
        one = run()
    monkeypatch.setattr(taps, 'CHUNK_ELEMS', 2 * x.shape[1] * 9 * 6)  # two samples per chunk
    assert taps._chunks(5, x.shape[1] * 9 * 6) == [(0, 2), (2, 4), (4, 5)]
    # capped by 1.5 times x's 2520 elements: one kernel-map row per chunk for the matrices (a 20 x 95
    # matrix and 20 x 25 kernels), two for their gradients (20 x 63, and the kernels' gradient)
    plan = dense._plan(9, 7, 5, 2, 1)
    assert [dense._rows_per_chunk(n, x.numel()) for n in (plan.matrix_entries(), plan.gradient_entries())] == [1, 2]
    # rows of 3 + 3 + 3 + 1 (samples x heads), or 1 + 1 (the heads of a batch-1 map)
    monkeypatch.setattr(dense, '_rows_per_chunk', lambda *args: 1 if batch1 else 3)
    for a, b in zip(run(), one):
        torch.testing.assert_close(a, b, **OP_TOL)


@pytest.mark.parametrize('grad', [False, True])
def test_auto_picks_native_on_cpu(grad):
    for Ho, k in ((56, 7), (7, 7), (28, 13)):
        assert choose_backend(Ho, Ho, k, grad) == ('native', 'CPU: fused C kernel')


@pytest.mark.parametrize('grad', [False, True])
def test_auto_without_a_compiler_picks_dense_on_small_maps_only(monkeypatch, grad):
    """Without the native kernels, the dense backend runs where its banded matrices cost little more than the
    k * k window, the tap walk elsewhere; conv-then-combine never on CPU (slower there at every stage shape,
    benchmarks/RESULTS.md)."""
    monkeypatch.setattr(functional, 'native_available', lambda: False)

    def impl_for(C, H, k, stride=1):
        Ho = filter_output_size(H, k, stride)
        return choose_backend(Ho, Ho, k, grad)[0]

    assert impl_for(512, 7, 7) == 'dense' and impl_for(256, 14, 13) == 'dense' and impl_for(512, 7, 3) == 'dense'
    assert impl_for(256, 28, 13) == 'dense' and impl_for(256, 28, 7, stride=2) == 'dense'  # the output's size counts
    assert impl_for(64, 56, 7) == impl_for(64, 56, 13) == impl_for(128, 28, 3) == 'taps'  # both operators
    # 28 x 28 at k = 7: the tap walk in inference, the dense backend with a gradient
    assert impl_for(128, 28, 7) == ('dense' if grad else 'taps')


@pytest.fixture(params=['native', 'dense', 'taps'])
def small_map_backend(request, monkeypatch):
    """'auto' picks the native backend on CPU, and without it the dense backend on the tests' small maps: run
    the test with each backend 'auto' may pick there."""
    if request.param != 'native':
        monkeypatch.setattr(functional, 'native_available', lambda: False)
    if request.param == 'taps':
        monkeypatch.setattr(functional, 'dense_pays', lambda *args, **kwargs: False)
    return request.param


@pytest.mark.parametrize('fn', ['cada', 'pixel'])
def test_channels_last_in_channels_last_out(fn, small_map_backend):
    x, alpha, bases, rel_pos, attn = op_inputs(3, C=16, H=8, W=8)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x.requires_grad_()
    if fn == 'cada':
        out, ref = cada_filter(xc, alpha, bases, rel_pos), cada_reference(x, alpha, bases, rel_pos)
    else:
        out, ref = pixel_filter(xc, attn, 3), pixel_filter_reference(x, attn, 3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, **OP_TOL)
    torch.testing.assert_close(grads(out, [xc])[0], grads(ref, [x])[0], **OP_TOL)


@pytest.mark.parametrize('fn', ['cada', 'pixel'])
def test_combine_keeps_channels_last(fn):
    x, alpha, bases, rel_pos, attn = op_inputs(3, C=16, H=8, W=8)
    xc = x.contiguous(memory_format=torch.channels_last)
    if fn == 'cada':
        out, ref = cada_filter(xc, alpha, bases, rel_pos, impl='combine'), cada_reference(x, alpha, bases, rel_pos)
    else:
        out, ref = pixel_filter(xc, attn, 3, impl='combine'), pixel_filter_reference(x, attn, 3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, **OP_TOL)


@pytest.mark.parametrize('impl', ['taps', 'dense', 'triton', 'native'])
@pytest.mark.parametrize('batch1', [False, True])
def test_kernel_grads_without_input_grad(monkeypatch, impl, batch1):
    """Only the kernels need a gradient (x is data): the backwards skip grad_x, and the dense one then
    reuses its scratch without re-zeroing it; several chunks, so a stale entry would show."""
    monkeypatch.setattr(taps, 'CHUNK_ELEMS', 1)  # one sample per chunk
    monkeypatch.setattr(dense, '_rows_per_chunk', lambda *args: 1)
    x, alpha, bases, rel_pos, _ = op_inputs(5, N=3, stride=2, batch1=batch1)
    inputs = [t.requires_grad_() for t in (alpha, bases, rel_pos)]
    out = cada_filter(x, alpha, bases, rel_pos, 2, impl=impl)
    ref = cada_reference(x, alpha, bases, rel_pos, 2)
    for g, g_ref in zip(grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


def _mixers():
    return [
        Cada2d(32, 32, 5), Cada2d(32, 32, 3, stride=2, rel_pos=True), Cada2d(32, 32, 5, identity_bases=True, num_bases=None),
        Position2d(32, 32, 5, feat_size=8), Local2d(32, 32, 5, feat_size=8),
    ]


@pytest.mark.parametrize('idx', range(5))
def test_bf16_autocast_close_to_fp32(idx, small_map_backend):
    m = perturbed(_mixers()[idx]).eval()
    x = torch.randn(2, 32, 8, 8)
    ref = m(x)
    xb = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = m(xb.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    out.float().sum().backward()
    assert torch.isfinite(xb.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize('idx', range(5))
def test_torchscript_matches_eager(idx):
    m = perturbed(_mixers()[idx]).eval()
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(torch.jit.script(m)(x), m(x), rtol=1e-5, atol=1e-5)


def test_fx_feature_extraction_keeps_mixers_as_leaves():
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for feature_cls in ('fx', None):
        torch.manual_seed(0)  # the same weights for both
        model = timm.create_model('resnet26_cada_k7_free', features_only=True, feature_cls=feature_cls, out_indices=(2,))
        outs.append(model.eval()(x)[0])
    torch.testing.assert_close(*outs)


def test_compile_fwd_bwd_matches_eager(small_map_backend):
    """Dynamo and AOT autograd through the custom Functions (the Inductor run on a model is slow)."""
    m = perturbed(Cada2d(32, 32, 5, rel_pos=True)).train()
    free = perturbed(Cada2d(32, 32, 3, stride=2, identity_bases=True, num_bases=None)).train()
    x = torch.randn(2, 32, 8, 8, requires_grad=True)

    def fn(x):
        return m(x).square().mean() + free(x).square().mean()

    ref = torch.autograd.grad(fn(x), [x, m.bases, free.ca[-1].weight])
    compiled = torch.compile(fn, backend='aot_eager', fullgraph=True)
    out = torch.autograd.grad(compiled(x), [x, m.bases, free.ca[-1].weight])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_inductor_resnet26_cada_k7():
    model = timm.create_model('resnet26_cada_k7', num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
    compiled(x).sum().backward()
    assert model.layer1[0].conv2.bases.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('amp', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('impls', [('taps', 'taps'), ('dense', 'dense')], ids=str)
def test_cuda_autocast_matches_reference(amp, impls):
    x, alpha, bases, rel_pos, attn = (t.cuda().float() for t in op_inputs(7, C=32, H=14, W=14, G=2, B=8))
    ref = cada_reference(x, alpha, bases, rel_pos)
    with torch.autocast('cuda', dtype=amp):
        out = cada_filter(x.to(amp), alpha, bases, rel_pos, impl=impls[0])
        out_pf = pixel_filter(x.to(amp), attn, 7, impl=impls[1])
    assert out.dtype == amp
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    ref_pf = pixel_filter_reference(x, attn, 7)
    torch.testing.assert_close(out_pf.float(), ref_pf, rtol=0.05, atol=0.05 * ref_pf.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('impl', ['taps', 'dense'])
def test_cuda_grads_match_reference(impl):
    x, alpha, bases, rel_pos, _ = (t.cuda() for t in op_inputs(5, stride=2, dilation=1))
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos)]
    out = cada_filter(x, alpha, bases, rel_pos, 2, impl=impl)
    ref = cada_reference(x, alpha, bases, rel_pos, 2)
    torch.testing.assert_close(out, ref, **OP_TOL)
    for g, g_ref in zip(grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


def test_bench_dry_run_op_level(tmp_path, capsys):
    load_script('benchmarks/bench.py').main(['--dry-run', '--level', 'op', '--amp', 'bf16', '--out-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert '| 32 | 8 | 3 | dw_conv |' in out and 'cada_op_taps' in out and 'unfold_ref' in out
    assert (tmp_path / 'ops_cpu_bf16.csv').read_text().count('\n') > 10


def test_bench_dry_run_inference_backends(tmp_path, capsys):
    load_script('benchmarks/bench.py').main(['--dry-run', '--level', 'infer', '--out-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert '## Inference: the backends' in out and '| 512 | 7 | 1 | 3 | native |' in out and 'native_ms' in out
    assert (tmp_path / 'infer_cpu.csv').read_text().count('\n') == 2


def test_bench_dry_run_chunk_study(tmp_path, capsys):
    rows = {}
    bench = load_script('benchmarks/bench.py')
    real = bench.bench_chunks
    bench.bench_chunks = lambda *a, **kw: rows.setdefault('rows', real(*a, **kw))
    bench.main(['--dry-run', '--level', 'chunks', '--out-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert '| 32 | 16 | 3 | taps | MAX_CHUNK_FRACTION | 0.25 |' in out and '| 32 | 8 | 3 | dense | NUMEL_FACTOR | 2 |' in out
    assert taps.MAX_CHUNK_FRACTION == 0.5 and dense.NUMEL_FACTOR == 1.5  # restored
    assert (tmp_path / 'chunks_cpu.csv').read_text().count('\n') == 7
    peak = {(r['backend'], r['value']): r['peak_mib'] for r in rows['rows']}
    # each setting reaches its backend: smaller chunks, less memory
    assert peak['taps', 0.25] < peak['taps', 0.4] < peak['taps', 0.5]
    assert peak['dense', 1.0] < peak['dense', 1.5] < peak['dense', 2.0]


@pytest.mark.slow
def test_bench_dry_run_model_level(tmp_path, capsys):
    load_script('benchmarks/bench.py').main(['--dry-run', '--level', 'model', '--out-dir', str(tmp_path)])
    assert 'resnet50_mixerfree' in capsys.readouterr().out
    assert (tmp_path / 'models_cpu.csv').exists()
    load_script('benchmarks/bench.py').main(['--dry-run', '--level', 'pairs', '--out-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert '| resnet50_cada_k13 | resnet50_dw_k13 |' in out and 'train >= 0.95' in out
    for layout in ('nchw', 'channels_last'):  # the study's pair at training only
        assert f'| resnet26_cada_k7 | resnet26_dw_k7 | {layout} |' in out
    assert 'train >= 0.9: ' in out and 'infer >= 0.9: ' in out and '| train_ratio_free |' in out
    assert (tmp_path / 'pairs_cpu.csv').exists()


@pytest.mark.parametrize('fmt', [torch.contiguous_format, torch.channels_last])
def test_bench_free_operator_keeps_the_rest_of_the_model(fmt):
    """The pairs level's bound: CADA's operator replaced by a stand-in, every CA generator still run both ways
    (stride 1 and 2, either layout), the bases untouched."""
    bench = load_script('benchmarks/bench.py')
    model = bench.free_operator(timm.create_model('resnet26_cada_k7', in_chans=1, img_size=28, num_classes=10,
                                                  small_stem=True, channels=[16, 32, 64, 128]))
    model = model.to(memory_format=fmt)
    x = torch.randn(2, 1, 28, 28).contiguous(memory_format=fmt)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    mixers = [m for m in model.modules() if isinstance(m, Cada2d)]
    assert {m.stride for m in mixers} == {1, 2}
    assert all(m.ca[0].weight.grad is not None and m.bases.grad is None for m in mixers)
    with pytest.raises(ValueError, match='no Cada2d'):
        bench.free_operator(torch.nn.Conv2d(1, 1, 1))


def test_bench_pair_targets_on_the_median_of_processes():
    """A pair's target is checked on the median of its processes' ratios, each of which is listed."""
    bench = load_script('benchmarks/bench.py')
    runs = [[dict(model='resnet26_cada_k7', against='resnet26_dw_k7', layout='channels_last', train_img_s=r,
                  train_img_s_against=1.0, train_ratio=r, train_ratio_free=2 * r)] for r in (0.5, 1.5, 0.95)]
    row, = bench.pair_summary(runs)
    assert row['train_ratio'] == 0.95 and row['train_ratio_each'] == '0.50 1.50 0.95' and row['train_ratio_free'] == 1.9
    assert row['targets'] == 'train >= 0.9: met' and 'infer_ratio' not in row


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_bench_cuda_dry_run(tmp_path, capsys):
    load_script('benchmarks/bench.py').main(['--dry-run', '--device', 'cuda', '--amp', 'fp16', '--channels-last', '--out-dir', str(tmp_path)])
    assert (tmp_path / 'ops_cuda_fp16_cl.csv').exists() and (tmp_path / 'models_cuda_fp16_cl.csv').exists()


@pytest.mark.parametrize('backend', ['taps', 'dense', 'triton', 'native'])
def test_fake_backward_matches_real_dtypes(backend):
    """What torch.compile traces (the fake kernels) must match what runs, including the empty tensors
    that stand for gradients not asked for, under bf16 autocast (x bf16, kernels float32)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, alpha, bases, rel_pos, attn = op_inputs(3, dtype=torch.float32)
    gy, x = torch.randn(x.shape, dtype=torch.bfloat16), x.to(torch.bfloat16)
    calls = [
        (getattr(torch.ops.timm_cada, f'cada_{backend}_backward'), (gy, x, alpha, bases, rel_pos),
         (1, 1, True, False, True, False)),
        (getattr(torch.ops.timm_cada, f'cada_{backend}_backward'), (gy, x, alpha, bases, None),
         (1, 1, False, True, False, True)),
        (getattr(torch.ops.timm_cada, f'pixel_filter_{backend}_backward'), (gy, x, attn), (3, 1, 1, False, True)),
    ]
    for op, tensors, args in calls:
        real = op(*tensors, *args)
        with FakeTensorMode() as mode:
            fake = op(*(t if t is None else mode.from_tensor(t) for t in tensors), *args)
        assert [(t.dtype, t.shape) for t in real] == [(t.dtype, t.shape) for t in fake]


@pytest.mark.parametrize('channels_last', [False, True])
def test_custom_ops_pass_opcheck(channels_last):
    """Fake kernels, autograd registration and schema of the custom ops (what torch.compile relies on)."""
    x, alpha, bases, rel_pos, attn = op_inputs(3, stride=2, dtype=torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for t in (x, alpha, bases, rel_pos, attn):
        t.requires_grad_()
    for backend in ('taps', 'dense', 'triton', 'native'):
        torch.library.opcheck(getattr(torch.ops.timm_cada, f'cada_{backend}').default, (x, alpha, bases, rel_pos, 2, 1))
        torch.library.opcheck(getattr(torch.ops.timm_cada, f'pixel_filter_{backend}').default, (x, attn, 3, 2, 1))


def test_bench_dry_run_onnx_level(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    load_script('benchmarks/bench.py').main(['--dry-run', '--level', 'onnx', '--out-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert '## ONNX: onnxruntime against PyTorch eager inference' in out and 'onnxruntime_x_eager' in out
    assert (tmp_path / 'onnx_cpu.csv').is_file() and not list(tmp_path.glob('*.onnx'))


# ------------------------------------------------------------------------------- the fused backends

@pytest.mark.parametrize('impl', ['triton', 'native'])
@pytest.mark.parametrize('dtype,channels_last', [(torch.float32, True), (torch.bfloat16, False), (torch.float16, True)],
                         ids=str)
@pytest.mark.parametrize('case', [dict(k=7, H=9, W=10), dict(k=5, stride=2, dilation=2), dict(k=3, N=2, batch1=True)], ids=str)
def test_fused_half_precision_and_layouts(impl, dtype, channels_last, case):
    """fp32, bf16 and fp16 inputs (float32 kernels, as under autocast), NCHW and channels_last, against the
    float64 reference of the same (rounded) inputs: outputs and every gradient, in the input's dtype."""
    k, stride, dilation, kw = split_case(case)
    x, alpha, bases, rel_pos, attn = op_inputs(k, **{**dict(N=1, C=32, H=11, W=10, G=2, B=8), **kw}, dtype=torch.float32)
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos, attn)]
    out_c = cada_filter(x, alpha, bases, rel_pos, stride, dilation, impl=impl)
    out_p = pixel_filter(x, attn, k, stride, dilation, impl=impl)
    assert out_c.dtype == out_p.dtype == dtype
    assert out_c.is_contiguous(memory_format=torch.channels_last) == channels_last
    d64 = [t.detach().double().requires_grad_() for t in inputs]
    ref_c = cada_reference(d64[0], d64[1], d64[2], d64[3], stride, dilation)
    ref_p = pixel_filter_reference(d64[0], d64[4], k, stride, dilation)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for out, ref in ((out_c, ref_c), (out_p, ref_p)):
        scale = ref.abs().max().item()
        torch.testing.assert_close(out.double() / scale, ref / scale, **tol)
    got = grads(out_c.float().square().sum() / 2 + out_p.float().sum(), inputs)
    want = grads(ref_c.square().sum() / 2 + ref_p.sum(), d64)
    for g, g_ref, t in zip(got, want, inputs):
        assert g.dtype == t.dtype
        scale = g_ref.abs().max().item()
        torch.testing.assert_close(g.double() / scale, g_ref / scale, **tol)


@pytest.mark.parametrize('batch1', [False, True])
def test_triton_several_tiles_per_map(monkeypatch, batch1):
    """Tiles of 16 pixels, so that every map spans several programs (the test maps fit one tile of the default
    size): the per-tile partial sums of grad_bases and grad_rel_pos, and the tail tile's masks. k = 3: the
    interpreter's time grows with the taps, and the tiles are what this test is about."""
    monkeypatch.setattr(triton_fused, 'BLOCK', 16)
    x, alpha, bases, rel_pos, attn = op_inputs(3, N=2, H=13, W=11, stride=2, batch1=batch1)
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos, attn)]
    assert alpha.shape[-2] * alpha.shape[-1] > 2 * 16
    out = cada_filter(x, alpha, bases, rel_pos, 2, impl='triton') + pixel_filter(x, attn, 3, 2, impl='triton')
    ref = cada_reference(x, alpha, bases, rel_pos, 2) + pixel_filter_reference(x, attn, 3, 2)
    torch.testing.assert_close(out, ref, **OP_TOL)
    for g, g_ref in zip(grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


@pytest.mark.parametrize('impl', ['triton', 'native'])
def test_fused_mixers_match_reference_backend(impl):
    """The modules with a fused backend (CADA with rel_pos at stride 2, identity bases, position) against the
    reference backend, forward and backward."""
    mixers = [Cada2d(32, 32, 5, stride=2, rel_pos=True), Cada2d(32, 32, 3, identity_bases=True, num_bases=None),
              Position2d(32, 32, 5, feat_size=8)]
    x = torch.randn(2, 32, 8, 8)
    for m in mixers:
        m = perturbed(m).train()
        outs = []
        for backend in ('reference', impl):
            set_backend(m, backend)
            xi = x.clone().requires_grad_()
            y = m(xi)
            outs.append([y] + list(torch.autograd.grad(y.square().sum(), [xi] + [p for p in m.parameters()])))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('threads,N', [(2, 5), (3, 5), (2, 1)])
def test_native_runs_heads_on_torch_threads(threads, N, channels_last):
    """The (sample, head) tasks shared by torch's OpenMP threads (the suite runs on one), unevenly where the
    threads do not divide them; the kernels' gradient in per-task partial sums. In channels_last a task is a
    whole sample where there are samples enough for the threads, else a head (N = 1)."""
    x, alpha, bases, rel_pos, attn = op_inputs(5, N=N, C=12, G=3, stride=2, dtype=torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos, attn)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cada_filter(x, alpha, bases, rel_pos, 2, impl='native') + pixel_filter(x, attn, 5, 2, impl='native')
        got = grads(out, inputs)
    finally:
        torch.set_num_threads(before)
    ref = cada_reference(x, alpha, bases, rel_pos, 2) + pixel_filter_reference(x, attn, 5, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(got, grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


# OP_CASES plus heads of 12 and 16 channels (the filter's 8-channel register blocks and the single channels after
# them) and 6 or 8 bases (the bases' gradient's 4-base tiles and a remainder)
NATIVE_LAYOUT_CASES = OP_CASES + [dict(k=7, C=24, G=2, B=6, H=11, W=13), dict(k=3, C=16, G=1, B=8, H=7, W=17),
                                  dict(k=5, C=32, G=2, B=8, N=1, stride=2, dilation=2, H=13, W=12, batch1=True)]


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('case', NATIVE_LAYOUT_CASES, ids=str)
def test_native_layouts_match_reference(case, channels_last):
    """The native kernels in both layouts they read and write directly: y and grad_x come back in x's layout;
    values and every gradient (CADA with rel_pos, and the pixel filter) to the float64 tolerance."""
    k, stride, dilation, kw = split_case(case)
    x, alpha, bases, rel_pos, attn = op_inputs(k, **kw)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xl = x.contiguous(memory_format=fmt)  # the reference takes it too
    inputs = [t.requires_grad_() for t in (xl, alpha, bases, rel_pos, attn)]
    out_c = cada_filter(xl, alpha, bases, rel_pos, stride, dilation, impl='native')
    out_p = pixel_filter(xl, attn, k, stride, dilation, impl='native')
    if x.shape[1] > 1:
        assert out_c.is_contiguous(memory_format=fmt) and out_p.is_contiguous(memory_format=fmt)
    ref_c = cada_reference(xl, alpha, bases, rel_pos, stride, dilation)
    ref_p = pixel_filter_reference(xl, attn, k, stride, dilation)
    torch.testing.assert_close(out_c, ref_c, **OP_TOL)
    torch.testing.assert_close(out_p, ref_p, **OP_TOL)
    # gy in the other layout for the pixel filter: the backward takes either
    got = grads(out_c, inputs[:4]) + grads(out_p.contiguous(), [inputs[0], inputs[4]])
    want = grads(ref_c, inputs[:4]) + grads(ref_p, [inputs[0], inputs[4]])
    assert got[0].is_contiguous(memory_format=fmt) and got[4].is_contiguous(memory_format=fmt)
    for g, g_ref in zip(got, want):
        torch.testing.assert_close(g, g_ref, **OP_TOL)


# channels_last heads of whole vectors (float32: 8 lanes, float64: 4), which the forward filters vectorised over
# channels (stride 1 and dilation 1 through its register shift), grad_x at strides 1 and 2 scatters the same way
# and the kernels' gradient sums over channels across lanes: heads of 1 to 4 vectors, rows under and over the
# pixel blocks (the shift's blocks of 4 or 6, whichever covers the row with fewer: 4 for rows of 4, 7, 15 and 28,
# 6 for 9, 10 and 11; 8 or 4 pixels elsewhere), tasks of a head (N = 1, two threads)
CHANNEL_VECTOR_CASES = [
    dict(dtype=torch.float32, C=16, G=1, k=7, H=28, W=28), dict(dtype=torch.float32, C=32, G=2, k=3, H=5, W=4),
    dict(dtype=torch.float32, C=16, G=2, k=3, H=4, W=10), dict(dtype=torch.float32, C=16, G=2, k=5, H=9, W=13, stride=2),
    dict(dtype=torch.float32, C=16, G=2, k=5, H=6, W=21, stride=2),
    dict(dtype=torch.float32, C=32, G=2, k=7, H=14, W=11, stride=2),
    dict(dtype=torch.float32, C=48, G=2, k=3, H=7, W=10, dilation=2), dict(dtype=torch.float32, C=64, G=2, k=13, H=7, W=7),
    dict(dtype=torch.float32, C=32, G=2, k=7, H=11, W=9, N=1),
    dict(dtype=torch.float64, C=8, G=2, k=7, H=10, W=15, batch1=True),
    dict(dtype=torch.float64, C=32, G=2, k=3, H=6, W=9, stride=2),
]


@pytest.mark.parametrize('case', CHANNEL_VECTOR_CASES, ids=str)
def test_native_channels_last_channel_vectors(case):
    """The channels_last paths for heads of whole vectors against the float64 reference: y and every gradient,
    CADA with rel_pos and the pixel filter."""
    k, stride, dilation, kw = split_case(case)
    N = kw.pop('N', 2)
    x, alpha, bases, rel_pos, attn = op_inputs(k, N=N, B=5, **kw)
    xl = x.contiguous(memory_format=torch.channels_last)
    inputs = [t.requires_grad_() for t in (xl, alpha, bases, rel_pos, attn)]
    before = torch.get_num_threads()
    torch.set_num_threads(2 if N == 1 else 1)
    try:
        out = cada_filter(xl, alpha, bases, rel_pos, stride, dilation, impl='native') + pixel_filter(
            xl, attn, k, stride, dilation, impl='native')
        got = grads(out.square().sum() / 2, inputs)
    finally:
        torch.set_num_threads(before)
    assert out.is_contiguous(memory_format=torch.channels_last) and got[0].is_contiguous(memory_format=torch.channels_last)
    d64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = cada_reference(d64[0], d64[1], d64[2], d64[3], stride, dilation) + pixel_filter_reference(
        d64[0], d64[4], k, stride, dilation)
    want = grads(ref.square().sum() / 2, d64)
    for a, b in zip([out] + list(got), [ref] + list(want)):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2, 3])
def test_native_channels_last_float32_tiles(stride):
    """float32 channels_last, whose copies transpose 8 x 8 tiles in registers: every stride phase's runs of a row
    8 pixels or more and no multiple of 8 (a last tile overlapping the one before), output rows of 8 pixels and a
    remainder, tasks of 24 channels (a whole sample) and of 12 (a head, N = 1 on two threads), against the float64
    reference."""
    for N, threads in ((2, 1), (1, 2)):
        x, alpha, bases, rel_pos, attn = op_inputs(5, N=N, C=24, G=2, B=4, H=6, W=18 * stride + 1, stride=stride,
                                                   dtype=torch.float32)
        xl = x.contiguous(memory_format=torch.channels_last)
        inputs = [t.requires_grad_() for t in (xl, alpha, bases, rel_pos, attn)]
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = cada_filter(xl, alpha, bases, rel_pos, stride, impl='native') + pixel_filter(xl, attn, 5, stride,
                                                                                               impl='native')
            got = grads(out.square().sum() / 2, inputs)
        finally:
            torch.set_num_threads(before)
        d64 = [t.detach().double().requires_grad_() for t in inputs]
        ref = cada_reference(d64[0], d64[1], d64[2], d64[3], stride) + pixel_filter_reference(d64[0], d64[4], 5,
                                                                                              stride)
        want = grads(ref.square().sum() / 2, d64)
        for a, b in zip([out] + list(got), [ref] + list(want)):
            scale = b.abs().max().item()
            torch.testing.assert_close(a.double() / scale, b / scale, rtol=1e-5, atol=1e-5)


def test_native_rejects_what_its_kernels_would_read_past():
    """The C kernels index without bounds checks: every shape they rely on is checked first, by name."""
    x, alpha, bases, rel_pos, attn = op_inputs(3, N=2, C=4, H=8, W=8, G=2, B=3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r'bases must be \(2, B >= 1, 3, 3\)'):
        cada_filter(x, alpha, bases[:1], impl='native')  # the reference would broadcast it
    with pytest.raises(ValueError, match=r'alpha must be \(N or 1, G, 3, 8, 8\)'):
        cada_filter(x, alpha[..., :1, :1], bases, impl='native')
    with pytest.raises(ValueError, match=r'rel_pos must be \(2, 3, 3\)'):
        cada_filter(x, alpha, bases, rel_pos[:, :2, :2], impl='native')
    with pytest.raises(ValueError, match='G dividing the 4 channels'):
        native.pixel_filter_native(x, attn[:, :1].expand(-1, 3, -1, -1, -1), 3)
    with pytest.raises(ValueError, match='stride and dilation must be >= 1'):
        native.cada_native(x, alpha, bases, None, 1, 0)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty kernel cache for the native backend; the default one again afterwards."""
    monkeypatch.setenv('TIMM_CADA_CACHE', str(tmp_path))
    native._load.cache_clear()
    yield tmp_path
    native._load.cache_clear()


def test_native_builds_once_into_its_cache(fresh_native, caplog):
    with caplog.at_level('WARNING', logger='timm_cada.ops.native'):
        assert native.native_available()
    assert not caplog.text  # a per-user cache is trusted
    built = list((fresh_native / 'native').glob('cada_cpu_*.so'))
    assert len(built) == 1
    assert built[0].stat().st_mode & 0o077 == 0  # for this user only
    native._load.cache_clear()
    mtime = built[0].stat().st_mtime_ns
    x, alpha, bases, _, _ = op_inputs(3, dtype=torch.float32)
    torch.testing.assert_close(cada_filter(x, alpha, bases, impl='native'), cada_reference(x, alpha, bases))
    assert list((fresh_native / 'native').glob('cada_cpu_*.so')) == built and built[0].stat().st_mtime_ns == mtime


def test_native_cache_made_private_under_a_group_umask(fresh_native, monkeypatch, caplog):
    """Every directory the cache needs is made 0700 whatever the umask (002 with user-private groups), so the
    cache we made passes our own check: no private rebuild, no warning."""
    monkeypatch.setenv('TIMM_CADA_CACHE', str(fresh_native / 'a' / 'b'))
    old = os.umask(0o002)
    try:
        with caplog.at_level('WARNING', logger='timm_cada.ops.native'):
            assert native.native_available()
    finally:
        os.umask(old)
    assert not caplog.text
    for d in (fresh_native / 'a', fresh_native / 'a' / 'b', fresh_native / 'a' / 'b' / 'native'):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert len(list((fresh_native / 'a' / 'b' / 'native').glob('cada_cpu_*.so'))) == 1


@pytest.mark.parametrize('cc,why', [('no-such-cc', "no C compiler: 'no-such-cc' is not on PATH"),
                                    ('false', 'the C compiler failed')])
def test_native_without_a_compiler_falls_back(monkeypatch, fresh_native, caplog, cc, why):
    """No compiler, or one that fails: 'auto' runs the PyTorch backends (and says why, once); impl='native' is
    a clear error."""
    monkeypatch.setenv('CC', cc)
    native._warn_once.cache_clear()
    x, alpha, bases, _, _ = op_inputs(3, dtype=torch.float32)
    with caplog.at_level('WARNING', logger='timm_cada.ops.native'):
        out = cada_filter(x, alpha, bases)
    assert why in caplog.text and "'auto' runs the PyTorch backends" in caplog.text
    torch.testing.assert_close(out, cada_reference(x, alpha, bases))
    assert choose_backend(56, 56, 7, True)[0] == 'taps'
    with pytest.raises(RuntimeError, match=f"impl='native' needs its C kernels built: {why}"):
        cada_filter(x, alpha, bases, impl='native')
    assert not list(fresh_native.rglob('*.so'))


PLANTED = """#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen(MARKER, "w"); if (f) fclose(f); }
"""


@pytest.mark.parametrize('how', ['trusted', 'group_writable_dir', 'world_writable_file', 'other_owner'])
def test_native_loads_no_planted_library(fresh_native, caplog, how):
    """A library under the expected name whose constructor leaves a marker: loaded from the user's own private
    cache (the control: the marker shows a load), never from a cache directory others can write, nor as a file
    others can write or own; the kernels are then built privately and work, and the log says why."""
    if how == 'other_owner' and os.getuid() != 0:
        pytest.skip('chown to another user needs root')
    cache, marker, cc = fresh_native / 'native', fresh_native / 'marker', os.environ.get('CC', 'cc')
    cache.mkdir(mode=0o700)
    (fresh_native / 'planted.c').write_text(PLANTED)
    for flags in ([*native._FLAGS, native._ARCH_FLAG], list(native._FLAGS)):
        lib = cache / native._build_name(cc, flags)
        subprocess.run([cc, '-shared', '-fPIC', f'-DMARKER="{marker}"', '-o', str(lib), str(fresh_native / 'planted.c')],
                       check=True)
        if how == 'world_writable_file':
            lib.chmod(0o666)
        if how == 'other_owner':
            os.chown(lib, 65534, 65534)
    if how == 'group_writable_dir':
        cache.chmod(0o770)
    with caplog.at_level('WARNING', logger='timm_cada.ops.native'):
        available = native.native_available()
    if how == 'trusted':
        assert marker.exists()
        return
    assert available and not marker.exists()
    why = {'group_writable_dir': f'{cache} is writable by its group or others (mode 770)',
           'world_writable_file': 'is writable by its group or others (mode 666)',
           'other_owner': 'belongs to another user (uid 65534)'}[how]
    assert 'not loading the native CADA kernels' in caplog.text and why in caplog.text
    x, alpha, bases, _, _ = op_inputs(3, dtype=torch.float32)
    torch.testing.assert_close(cada_filter(x, alpha, bases, impl='native'), cada_reference(x, alpha, bases))


def test_native_with_an_unwritable_cache_says_so(monkeypatch, fresh_native):
    blocker = fresh_native / 'a_file'
    blocker.write_text('')
    monkeypatch.setenv('TIMM_CADA_CACHE', str(blocker))  # its native/ subdirectory cannot be made
    x, alpha, bases, _, _ = op_inputs(3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match='cannot build into .*set TIMM_CADA_CACHE to a writable directory'):
        cada_filter(x, alpha, bases, impl='native')


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    x, alpha, bases, _, _ = op_inputs(3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="impl='triton' runs on CUDA tensors.*TRITON_INTERPRET=1"):
        cada_filter(x, alpha, bases, impl='triton')


def test_auto_picks_triton_on_cuda_only():
    for grad in (False, True):
        for Ho, k in ((56, 7), (7, 13)):
            assert choose_backend(Ho, Ho, k, grad, device='cuda')[0] == 'triton'
            assert choose_backend(Ho, Ho, k, grad)[0] != 'triton'


def test_backend_names_literal_is_backends():
    """The backend names `_backend` spells out for TorchScript are CADA_IMPLS, in order: one list of names."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(functional._backend).strip())
    literals = [tuple(ast.literal_eval(n)) for n in ast.walk(tree) if isinstance(n, (ast.List, ast.Tuple))
                and n.elts and all(isinstance(e, ast.Constant) and e.value in CADA_IMPLS for e in n.elts)]
    assert literals == [CADA_IMPLS] == [('auto',) + tuple(functional.BACKENDS)]


def test_set_backend_sets_every_window_op_mixer():
    model = timm.create_model('resnet26_cada_k7_rpe')
    mixers = [m for m in model.modules() if isinstance(m, (Cada2d, Position2d))]
    assert set_backend(model, 'reference') == len(mixers) > 0 and {m.impl for m in mixers} == {'reference'}
    with pytest.raises(ValueError, match='impl must be one of'):
        set_backend(model, 'fast')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_triton_matches_reference(dtype):
    x, alpha, bases, rel_pos, attn = (t.cuda().float() for t in op_inputs(7, C=64, H=20, W=19, G=4, B=8, stride=2))
    inputs = [t.requires_grad_() for t in (x, alpha, bases, rel_pos)]
    out = cada_filter(x.to(dtype), alpha, bases, rel_pos, 2)  # 'auto' picks triton on CUDA
    ref = cada_reference(x, alpha, bases, rel_pos, 2)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.float() / scale, ref / scale, **tol)
    for g, g_ref in zip(grads(out.float(), inputs), grads(ref, inputs)):
        torch.testing.assert_close(g / g_ref.abs().max(), g_ref / g_ref.abs().max(), **tol)


def test_gpu_check_correctness_step_runs_here():
    """benchmarks/gpu_check.py's correctness step, on CPU tensors through the interpreter at a tiny size: every
    case, dtype and layout within tolerance. Its timing steps need a GPU, and say so."""
    gpu_check = load_script('benchmarks/gpu_check.py')
    rows = gpu_check.check_correctness(torch.device('cpu'), size=(1, 16, 7, 6), cases=[(3, 2, 1, True, False),
                                                                                       (3, 1, 2, False, True)])
    assert len(rows) == 12 and all(r['ok'] for r in rows), [r for r in rows if not r['ok']]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.main(['--quick'])
