""" Export of every mixer family: ONNX through both torch.onnx exporters and timm's own onnx_export, run in
onnxruntime against PyTorch with a dynamic batch (and height and width where the mixer allows), and
torch.export programs against eager. Small models (one block a stage, 32 px) keep it quick. """
import re
import warnings

import pytest
import timm
import torch
from timm.utils.onnx import onnx_export as timm_onnx_export

import timm_cada  # noqa: F401
from timm_cada.compat import timm_version
from timm_cada.export import (
    PARITY_TOL, check_inputs, dynamic_dims, export_onnx, export_program, main, onnx_runner, parity)
from helpers import FAMILIES

pytest.importorskip('onnxruntime')

# the same families with another k or CA context: the TorchScript exporter and torch.export only (quick)
MORE = ['resnet26_cada_k13', 'resnet26_cada_k7_ca3', 'resnet26_cada_k7_b2']
SIZE = 32


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """`name` with one block a stage, narrow, 32 px, its parameters moved off the init (CADA's generator
    starts at zero, which would make every context look alike)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), small_stem=True,
                              img_size=SIZE, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def example(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def assert_parity(rows, n_sizes):
    assert len(rows) == n_sizes
    for row in rows:
        assert row['rel_err'] <= PARITY_TOL, row


def test_dynamic_dims_follow_the_fixed_input_size_trait():
    assert dynamic_dims(tiny('resnet26_cada_k7')) == (0, 2, 3)
    assert dynamic_dims(tiny('resnet26_local_k7')) == (0,)


@pytest.mark.parametrize('exporter', ['dynamo', 'torchscript'])
@pytest.mark.parametrize('name', FAMILIES)
def test_onnx_matches_pytorch(name, exporter, tmp_path):
    model, x = tiny(name), example()
    path = str(tmp_path / f'{name}.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('error', torch.jit.TracerWarning)  # a traced shape check would freeze a size
        export_onnx(model, path, x, exporter)
    inputs = check_inputs(x, dynamic_dims(model))
    assert_parity(parity(model, onnx_runner(path), inputs), 2 if 'local' in name else 3)
    assert {t.shape[-1] for t in inputs} == ({SIZE} if 'local' in name else {SIZE, SIZE + SIZE // 4 + 1})


@pytest.mark.parametrize('name', MORE)
def test_onnx_torchscript_exporter_more_settings(name, tmp_path):
    model, x = tiny(name), example()
    path = export_onnx(model, str(tmp_path / 'm.onnx'), x, 'torchscript')
    assert_parity(parity(model, onnx_runner(path), check_inputs(x, dynamic_dims(model))), 3)


# timm's dynamo path before 1.0.31 calls torch.onnx.ExportOptions, which the torch here no longer has: timm's
# own limitation, not the models'.
TIMM_DYNAMO_ONNX = pytest.mark.skipif(timm_version() < (1, 0, 31) and not hasattr(torch.onnx, 'ExportOptions'),
                                      reason="timm<1.0.31's dynamo ONNX export needs torch.onnx.ExportOptions")


@pytest.mark.parametrize('use_dynamo', [False, pytest.param(True, marks=TIMM_DYNAMO_ONNX)])
@pytest.mark.parametrize('name', ['resnet26_cada_k7', 'resnet26_cada_k7_free'])
def test_timm_onnx_export(name, use_dynamo, tmp_path):
    """timm's own exporter (what its onnx_export.py script calls), checked by timm against onnxruntime."""
    model = tiny(name)
    path = str(tmp_path / 'm.onnx')
    timm_onnx_export(model, path, input_size=(3, SIZE, SIZE), batch_size=2, dynamic_size=True,
                     check_forward=True, use_dynamo=use_dynamo)
    assert_parity(parity(model, onnx_runner(path), check_inputs(example(), (0, 2, 3))), 3)


@pytest.mark.parametrize('name', FAMILIES + MORE)
def test_torch_export_program_matches_eager(name):
    """Also at twice the size, where 'auto' in eager picks other backends for some layers than at the
    traced size: the program holds there too (it runs 'taps' whatever the size)."""
    model, x = tiny(name), example()
    program = export_program(model, x)
    inputs = check_inputs(x, dynamic_dims(model))
    if 'local' not in name:
        inputs.append(torch.randn(2, 3, 2 * SIZE, 2 * SIZE))
    assert_parity(parity(model, program.module(), inputs), 2 if 'local' in name else 4)


def test_compile_has_no_graph_break_with_the_export_branch():
    """The ONNX-export branch of the operators is decided at trace time: fullgraph compile still holds."""
    model, x = tiny('resnet26_cada_k7_free'), example()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def tiny_checkpoint(name: str, path) -> str:
    """A train.py-style checkpoint of `tiny(name)`: its model_kwargs let the CLI rebuild it."""
    torch.save(dict(arch=name, state_dict=tiny(name).state_dict(), model_kwargs=dict(
        layers=[1, 1, 1, 1], channels=[16, 32, 64, 128], small_stem=True, img_size=SIZE, num_classes=10)), path)
    return str(path)


def test_cli_writes_and_checks(tmp_path, capsys):
    ckpt = tiny_checkpoint('resnet26_position_k7', tmp_path / 'w.pth')
    for out in ('m.onnx', 'm.pt2'):
        rows = main(['--model', 'resnet26_position_k7', '--checkpoint', ckpt, '--output', str(tmp_path / out),
                     '--exporter', 'torchscript'])
        assert_parity(rows, 3)
        assert (tmp_path / out).is_file()
    text = capsys.readouterr().out
    assert 'free: batch, height, width' in text and 'of the outputs\' scale' in text


@pytest.mark.parametrize('argv, match', [
    (['--model', 'resnet26_cada_k8', '--pretrained', '--output', 'x.onnx'], '--model: unknown model'),
    (['--model', 'resnet26_cada_k7', '--checkpoint', 'missing.pth', '--output', 'x.onnx'], '--checkpoint: .* does not exist'),
    (['--model', 'resnet26_cada_k7', '--pretrained', '--output', 'x.tflite'], '--output must end in .onnx or .pt2'),
    (['--model', 'resnet26_cada_k7', '--pretrained', '--output', 'x.onnx', '--opset', '13'], '--opset must be 17'),
    (['--model', 'resnet26_cada_k7', '--output', 'x.onnx'], 'one of the arguments --checkpoint --pretrained'),
    (['--model', 'resnet26_cada_k7', '--pretrained', '--output', 'x.onnx'], '--pretrained: No pretrained weights are published'),
])
def test_cli_bad_input(argv, match, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert re.search(match, capsys.readouterr().err)


def test_local_model_at_another_size_is_refused(tmp_path, capsys):
    ckpt = tiny_checkpoint('resnet26_local_k7', tmp_path / 'w.pth')
    with pytest.raises(SystemExit):
        main(['--model', 'resnet26_local_k7', '--checkpoint', ckpt, '--output', str(tmp_path / 'm.onnx'),
              '--img-size', '48'])
    assert '--img-size: Local2d is built for a 32x32 output' in capsys.readouterr().err
