""" Export to the runtimes people deploy with: ONNX (torch.onnx, either exporter) and torch.export programs.

    python -m timm_cada.export --model resnet50_cada_k7 --checkpoint CKPT --output resnet50_cada_k7.onnx
    python -m timm_cada.export --model resnet50_cada_k7 --checkpoint CKPT --output resnet50_cada_k7.pt2

ONNX has no translation of the fast backends' custom ops, so while torch.onnx exports, the operators take
their plain PyTorch paths (timm_cada/ops/functional.py): conv-then-combine for CADA (depthwise convs and
elementwise ops) and, for per-pixel kernels, one conv that gathers every window, then the weighted sum. Eager
and compiled runs never see that branch. A torch.export program keeps the custom ops ('taps' for 'auto',
whatever the size; import timm_cada before loading one).

The batch is always dynamic, and so are height and width unless a mixer is built for one input size (the
`fixed_input_size` trait of the mixer registry, e.g. 'local'). After an ONNX export the file is checked with
onnx's checker and run in onnxruntime against PyTorch: at the export size, at another batch and, where
free, at another height and width.
"""
import argparse
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import resolve_data_config

from timm_cada.layers import spec_of
from timm_cada.models import NoPretrainedWeightsError
from timm_cada.load import ModelLoadError, import_modules, load_model

__all__ = ['EXPORTERS', 'DEFAULT_OPSET', 'PARITY_TOL', 'dynamic_dims', 'export_onnx', 'export_program',
           'check_inputs', 'onnx_runner', 'parity', 'main']

EXPORTERS = ('dynamo', 'torchscript')  # torch.onnx.export(dynamo=True), the default since torch 2.9, or False
DEFAULT_OPSET = 18
# The largest error accepted between a runtime and PyTorch, relative to the largest |output|.
PARITY_TOL = 1e-4
INPUT_NAME, OUTPUT_NAME = 'input0', 'output0'  # as timm's onnx_export names them


def dynamic_dims(model: nn.Module) -> Tuple[int, ...]:
    """The input dims an export leaves free: the batch (0), and height and width (2, 3) unless a mixer
    of `model` has the `fixed_input_size` trait."""
    fixed = any(spec is not None and spec.fixed_input_size for spec in map(spec_of, model.modules()))
    return (0,) if fixed else (0, 2, 3)


_DIM_NAMES = {0: 'batch', 2: 'height', 3: 'width'}


def _example(example: torch.Tensor) -> torch.Tensor:
    # torch.export specialises dims of size 1, which would fix the batch: trace with two images at least
    return torch.cat([example, example]) if example.shape[0] == 1 else example


def export_onnx(
        model: nn.Module,
        path: str,
        example: torch.Tensor,
        exporter: str = 'dynamo',
        opset: int = DEFAULT_OPSET,
        dynamic: Optional[Sequence[int]] = None,
) -> str:
    """Write `model` (put in eval mode) to the ONNX file `path`, traced on `example` (N, C, H, W), and check
    it with onnx's checker; `dynamic`: the free input dims (default `dynamic_dims(model)`)."""
    import onnx
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {", ".join(EXPORTERS)}; got {exporter!r}')
    if opset < 17:
        raise ValueError(f'opset must be 17 or later, got {opset}')
    model.eval()
    axes = {d: _DIM_NAMES[d] for d in (dynamic_dims(model) if dynamic is None else dynamic)}
    with torch.no_grad():
        if exporter == 'dynamo':
            torch.onnx.export(
                model, (_example(example),), path, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=(axes,), external_data=False)
        else:
            torch.onnx.export(
                model, (example,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: 'batch'}})
    onnx.checker.check_model(path, full_check=True)
    return path


def export_program(model: nn.Module, example: torch.Tensor, dynamic: Optional[Sequence[int]] = None,
                   ) -> torch.export.ExportedProgram:
    """A torch.export program of `model` (put in eval mode) for inputs like `example`, with the free dims
    `dynamic` (default `dynamic_dims(model)`). It calls the fast backends' custom ops: import timm_cada
    before running a loaded one."""
    model.eval()
    dims = dynamic_dims(model) if dynamic is None else dynamic
    shapes = ({d: torch.export.Dim.DYNAMIC for d in dims},)
    return torch.export.export(model, (_example(example),), dynamic_shapes=shapes)


def check_inputs(example: torch.Tensor, dynamic: Sequence[int], seed: int = 0) -> List[torch.Tensor]:
    """Random inputs to hold an export to: `example`'s shape, one more image and, with free height and
    width, odd sizes about a quarter off (the padding and the strides meet other remainders there)."""
    N, C, H, W = example.shape
    shapes = [(N, C, H, W), (N + 1, C, H, W)]
    if 2 in dynamic and 3 in dynamic:
        shapes.append((N, C, H - H // 4 + 1, W + W // 4 + 1))
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


def onnx_runner(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs the ONNX file `path` in onnxruntime (CPU) on one input tensor."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def parity(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[torch.Tensor],
           ) -> List[Dict[str, object]]:
    """`run` (an exported model) against `model` in PyTorch (eval mode) on each input: the shape, the largest
    absolute difference, the largest |output| and their ratio (`rel_err`, held to PARITY_TOL)."""
    model.eval()
    rows = []
    for x in inputs:
        with torch.no_grad():
            ref, out = model(x).float(), run(x).float()
        if out.shape != ref.shape:
            raise AssertionError(f'the export gave shape {tuple(out.shape)} for input {tuple(x.shape)}, '
                                 f'PyTorch {tuple(ref.shape)}')
        err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
        rows.append(dict(shape=tuple(x.shape), max_abs_err=err, scale=scale, rel_err=err / max(scale, 1e-12)))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    import timm_cada  # noqa: F401  (registers the models)
    parser = argparse.ArgumentParser(prog='python -m timm_cada.export', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='a timm_cada model (or any timm model)')
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument('--checkpoint', default=None, help='its weights: a train.py checkpoint or a state dict')
    weights.add_argument('--pretrained', action='store_true', help='its published weights (the Hugging Face Hub)')
    parser.add_argument('--output', required=True, help='FILE.onnx (ONNX) or FILE.pt2 (a torch.export program)')
    parser.add_argument('--exporter', default='dynamo', choices=EXPORTERS,
                        help='ONNX only: torch.onnx.export with dynamo=True (default) or the TorchScript exporter')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument('--img-size', type=int, default=None,
                        help='height and width of the traced input (default: the model\'s input_size)')
    parser.add_argument('-b', '--batch-size', type=int, default=2, help='batch of the traced input (default 2)')
    parser.add_argument('--static-size', action='store_true', help='fix height and width (the batch stays free)')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime / program check')
    parser.add_argument('--device-modules', nargs='*', default=[], metavar='MODULE',
                        help='modules to import first, e.g. one that registers your own mixer')
    args = parser.parse_args(argv)
    suffix = os.path.splitext(args.output)[1]
    if suffix not in ('.onnx', '.pt2'):
        parser.error(f'--output must end in .onnx or .pt2, got {args.output!r}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    if args.opset < 17:
        parser.error(f'--opset must be 17 or later, got {args.opset}')
    try:
        import_modules(args.device_modules)
    except ValueError as e:
        parser.error(f'--device-modules: {e}')
    try:
        model, data_args = load_model(args.model, args.checkpoint, pretrained=args.pretrained)
    except ModelLoadError as e:
        parser.error(e.named('--model', '--checkpoint'))
    except NoPretrainedWeightsError as e:
        parser.error(f'--pretrained: {e}')
    except ValueError as e:  # e.g. timm.create_model refusing a checkpoint's model kwargs
        parser.error(str(e))
    # the size the run trained at (its data arguments), else the model's pretrained cfg
    chans, height, width = resolve_data_config(data_args, model=model)['input_size']
    if args.img_size is not None:
        height = width = args.img_size
    example = torch.randn(args.batch_size, chans, height, width, generator=torch.Generator().manual_seed(0))
    dynamic = (0,) if args.static_size else dynamic_dims(model)
    if os.path.dirname(args.output):
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
    try:
        with torch.no_grad():
            model(example)  # a clear error (e.g. a fixed-size mixer given another size) before tracing
    except ValueError as e:
        parser.error(f'--img-size: {e}' if args.img_size is not None else str(e))
    free = ', '.join(_DIM_NAMES[d] for d in dynamic)
    if suffix == '.pt2':
        program = export_program(model, example, dynamic)
        torch.export.save(program, args.output)
        what = 'the torch.export program'
    else:
        export_onnx(model, args.output, example, args.exporter, args.opset, dynamic)
        what = f'onnxruntime ({args.exporter} exporter, opset {args.opset})'
    print(f'Wrote {args.output} ({args.model}, {chans}x{height}x{width}; free: {free})')
    if args.no_check:
        return []
    run = program.module() if suffix == '.pt2' else onnx_runner(args.output)
    rows = parity(model, run, check_inputs(example, dynamic))
    for row in rows:
        print(f'  {what} vs PyTorch at {row["shape"]}: max abs error {row["max_abs_err"]:.2e}, '
              f'{row["rel_err"]:.2e} of the outputs\' scale')
    worst = max(row['rel_err'] for row in rows)
    if worst > PARITY_TOL:
        raise SystemExit(f'export check failed: error {worst:.2e} of the outputs\' scale exceeds {PARITY_TOL:.0e}')
    return rows


if __name__ == '__main__':
    main()
