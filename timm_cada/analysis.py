""" Seeing the biases: the kernels each mixer of a model applies, two inductive biases as numbers, pictures.

    python -m timm_cada.analysis --model NAME [--checkpoint PATH] --image IMG [IMG ...] --out DIR \\
        [--erf NAME[=CHECKPOINT] ...]

The kernels are captured with forward hooks, the forward unchanged, from every mixer that exposes
`kernels(x)` (the mixer contract, `timm_cada/layers/registry.py`): the (N or 1, G, D, Ho, Wo) kernel that each
output position applies, G groups of channels sharing one kernel of D weights. For the kernels K[n, g, p]
of one layer (image n, group g, output position p, vectors of D weights):

    spatial_variation   = sum ||K[n, g, p] - mean_p K[n, g, :]||^2 / sum ||K[n, g, p]||^2
    context_sensitivity = sum ||K[n, g, p] - mean_n K[:, g, p]||^2 / sum ||K[n, g, p]||^2

(sums over n, g and p). Both lie in [0, 1] and have no unit, so layers and models compare: spatial variation
is the share of the kernels' energy that changes from one position to another of an image (0 for strict
spatial invariance: a dw or dense conv), context sensitivity the share that changes from one input to another
at one position (0 for dw, position and local, whose kernels ignore the input; it needs two images at least).
A model's figure is the mean of its layers'. Zeros are exact: the deviations are taken from one reference
kernel before the mean, so identical kernels give 0.0, not a rounding error.

Writes DIR/metrics.json and PNGs: each layer family's base kernels (heads x bases), the base that dominates
each pixel next to the image, attention maps at query pixels drawn on the image, and effective receptive
fields (the gradient of a centre output with respect to the input) of the model and the --erf models.
"""
import argparse
import dataclasses
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from timm.data import create_transform, resolve_data_config

from timm_cada.layers import spec_of
from timm_cada.load import SAVED_PREFIXES, ModelLoadError, import_modules, load_model, per_channel

__all__ = ['Capture', 'capture_kernels', 'spatial_variation', 'context_sensitivity', 'layer_metrics', 'model_metrics',
           'effective_receptive_field', 'load_images', 'analyse']


@dataclasses.dataclass
class Capture:
    """What one mixer applied in a forward pass."""
    mixer: str  # its registered name
    module: nn.Module
    in_size: Tuple[int, int]
    kernels: torch.Tensor  # (N or 1, G, D, Ho, Wo)
    base_weights: Optional[torch.Tensor] = None  # (N or 1, G, B, Ho, Wo), for mixers built from learned bases


@torch.no_grad()
def capture_kernels(model: nn.Module, x: torch.Tensor) -> Dict[str, Capture]:
    """Run `model` on `x` (in eval mode) and capture, by module name, the kernels of every mixer that exposes
    them; the forward itself is unchanged."""
    captures: Dict[str, Capture] = {}

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x_in = inputs[0]
            weights = None
            if getattr(module, 'bases', None) is not None and hasattr(module, 'base_weights'):
                weights = module.base_weights(x_in).detach().float()
            captures[name] = Capture(spec_of(module).name, module, tuple(x_in.shape[-2:]),
                                     module.kernels(x_in).detach().float(), weights)
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if spec_of(m) is not None and callable(getattr(m, 'kernels', None))]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return captures


def _variation(kernels: torch.Tensor, dims: Tuple[int, ...]) -> float:
    """sum ||K - mean_dims K||^2 / sum ||K||^2 for K (N, G, D, P), deviations taken from the first element along
    `dims` first, so that identical kernels give exactly 0."""
    k = kernels.double()
    ref = k
    for d in dims:
        ref = ref.narrow(d, 0, 1)
    dev = k - ref
    spread = (dev - dev.mean(dim=dims, keepdim=True)).square().sum()
    energy = k.square().sum()
    return 0.0 if energy == 0 else float(spread / energy)


def _flat(kernels: torch.Tensor, n: int) -> torch.Tensor:
    """(N or 1, G, D, Ho, Wo) as (n, G, D, Ho * Wo): kernels that ignore the input repeated for each image."""
    return kernels.expand(n, *kernels.shape[1:]).flatten(3)


def spatial_variation(kernels: torch.Tensor) -> float:
    """The share of the kernels' energy that varies over positions, in [0, 1]; 0 for spatial invariance."""
    return _variation(_flat(kernels, kernels.shape[0]), (3,))


def context_sensitivity(kernels: torch.Tensor, num_images: int) -> Optional[float]:
    """The share of the kernels' energy that varies over inputs at a position, in [0, 1]; 0 when the kernels
    ignore the input; None for a single image."""
    if num_images < 2:
        return None
    return _variation(_flat(kernels, num_images), (0,))


def layer_metrics(captures: Dict[str, Capture], num_images: int) -> Dict[str, Dict[str, object]]:
    return {name: {'mixer': c.mixer, 'kernels': list(c.kernels.shape),
                   'spatial_variation': spatial_variation(c.kernels),
                   'context_sensitivity': context_sensitivity(c.kernels, num_images)}
            for name, c in captures.items()}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def model_metrics(captures: Dict[str, Capture], num_images: int) -> Dict[str, object]:
    """Both figures of the model (the mean over its layers) and of each layer."""
    layers = layer_metrics(captures, num_images)
    return {'spatial_variation': _mean([m['spatial_variation'] for m in layers.values()]),
            'context_sensitivity': _mean([m['context_sensitivity'] for m in layers.values()]),
            'layers': layers}


def effective_receptive_field(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """|d out[:, :, centre] / d x| summed over the batch and input channels, (H, W): how much each input pixel
    moves the centre position (h // 2, w // 2) of `fn`'s output map (summed over its channels); on an even-sized
    map that is the lower right of the middle four."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    h, w = out.shape[-2:]
    out[:, :, h // 2, w // 2].sum().backward()
    return x.grad.abs().sum(dim=(0, 1))


# ------------------------------------------------------------------------------------------- inputs

def load_images(paths: Sequence[str], model: nn.Module, data_args: Optional[Dict[str, object]] = None,
                ) -> Tuple[torch.Tensor, List[object]]:
    """The images as the model's eval transform gives them (N, C, H, W), and as PIL images of that size for the
    pictures; `data_args` as timm's resolve_data_config takes them (a training run's arguments)."""
    from PIL import Image
    config = resolve_data_config(dict(data_args or {}), model=model)
    chans = config['input_size'][0]
    for key in ('mean', 'std'):
        config[key] = per_channel(config[key], chans)
    transform = create_transform(**config, is_training=False)
    # the pictures go through the transform's resize and crop, so that they line up with the tensors
    steps = transform.transforms
    geometry = steps[:next((i for i, t in enumerate(steps) if 'Tensor' in type(t).__name__), len(steps))]
    tensors, pictures = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert('L' if chans == 1 else 'RGB')
        except (OSError, ValueError) as e:
            raise ValueError(f'--image: cannot open {path} as an image ({e})') from None
        tensors.append(transform(img))
        for t in geometry:
            img = t(img)
        pictures.append(img)
    return torch.stack(tensors), pictures


# ------------------------------------------------------------------------------------------ pictures

def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _show(ax, picture) -> None:
    """The image with pixel (i, j) covering [j, j + 1] x [i, i + 1], so maps can be placed in pixel units."""
    width, height = picture.size
    ax.imshow(picture, cmap='gray' if picture.mode == 'L' else None, extent=(0, width, height, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_base_kernels(name: str, module: nn.Module, path: str, max_heads: int = 8) -> None:
    """A layer's learned base kernels: one row per head, one column per base, each on its own colour scale."""
    plt = _pyplot()
    bases = module.bases.detach().float()[:max_heads]
    G, B = bases.shape[:2]
    fig, axes = plt.subplots(G, B, figsize=(1.1 * B + 0.6, 1.1 * G + 0.6), squeeze=False)
    for g in range(G):
        for b in range(B):
            w = bases[g, b]
            lim = float(w.abs().max()) or 1.0
            axes[g, b].imshow(w, cmap='RdBu_r', vmin=-lim, vmax=lim)
            axes[g, b].set_xticks([])
            axes[g, b].set_yticks([])
        axes[g, 0].set_ylabel(f'head {g}', fontsize=8)
    for b in range(B):
        axes[0, b].set_title(f'base {b}', fontsize=8)
    fig.suptitle(f'{name}: base kernels (red > 0 > blue)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_dominant_bases(name: str, capture: Capture, pictures: Sequence[object], path: str, max_heads: int = 4) -> None:
    """Which base has the largest weight at each output pixel, per head, next to each image."""
    plt = _pyplot()
    weights = capture.base_weights.expand(len(pictures), *capture.base_weights.shape[1:])
    G, B = weights.shape[1], weights.shape[2]
    heads = min(G, max_heads)
    fig, axes = plt.subplots(len(pictures), heads + 1, figsize=(2.0 * (heads + 1) + 1.2, 2.1 * len(pictures) + 0.4),
                             squeeze=False)
    cmap = plt.get_cmap('tab10' if B <= 10 else 'tab20', B)
    for n, picture in enumerate(pictures):
        _show(axes[n, 0], picture)
        axes[n, 0].set_title('input', fontsize=8)
        for g in range(heads):
            im = axes[n, g + 1].imshow(weights[n, g].argmax(dim=0), cmap=cmap, vmin=-0.5, vmax=B - 0.5,
                                       interpolation='nearest')
            axes[n, g + 1].set_xticks([])
            axes[n, g + 1].set_yticks([])
            axes[n, g + 1].set_title(f'head {g}', fontsize=8)
    fig.suptitle(f'{name}\nthe base with the largest weight at each pixel', fontsize=9)
    fig.tight_layout()
    fig.colorbar(im, ax=axes.ravel().tolist(), ticks=range(B), label='base', shrink=0.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def query_pixels(size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Three query positions of an output map: the centre and two off-centre points."""
    h, w = size
    return [(h // 2, w // 2), (h // 4, w // 4), ((3 * h) // 4, (2 * w) // 3)]


def _window(module: nn.Module) -> Tuple[Optional[int], int, int]:
    """(kernel_size, stride, dilation) of a mixer (ints, or the tuples of an nn.Conv2d); a mixer that does not
    say has stride and dilation 1, and kernel_size None."""
    first = lambda v: v if v is None or isinstance(v, int) else v[0]
    return tuple(first(getattr(module, a, d)) for a, d in (('kernel_size', None), ('stride', 1), ('dilation', 1)))


def plot_attention(name: str, capture: Capture, pictures: Sequence[object], path: str) -> None:
    """The k x k attention map (head 0) at a few query pixels, drawn on the image where it applies."""
    plt = _pyplot()
    module, kernels = capture.module, capture.kernels
    k, stride, dilation = _window(module)
    Ho, Wo = kernels.shape[-2:]
    queries = query_pixels((Ho, Wo))
    fig, axes = plt.subplots(len(pictures), len(queries), figsize=(2.6 * len(queries), 2.6 * len(pictures)), squeeze=False)
    for n, picture in enumerate(pictures):
        width, height = picture.size
        scale_y, scale_x = height / capture.in_size[0], width / capture.in_size[1]  # input pixels per map pixel
        attn = kernels[min(n, kernels.shape[0] - 1), 0].reshape(-1, k, k, Ho, Wo)[0]
        for q, (i, j) in enumerate(queries):
            ax = axes[n, q]
            _show(ax, picture)
            a = attn[:, :, i, j]
            lim = float(a.abs().max()) or 1.0
            cy, cx = (i * stride + 0.5) * scale_y, (j * stride + 0.5) * scale_x
            half_y, half_x = (k // 2 * dilation + 0.5) * scale_y, (k // 2 * dilation + 0.5) * scale_x
            ax.imshow(a, cmap='RdBu_r', vmin=-lim, vmax=lim, alpha=0.7, interpolation='nearest',
                      extent=(cx - half_x, cx + half_x, cy + half_y, cy - half_y))
            ax.plot([cx], [cy], marker='+', color='yellow', markersize=8)
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_title(f'query ({i}, {j}) of {Ho}x{Wo}', fontsize=8)
    fig.suptitle(f'{name}: attention maps of head 0 (red > 0 > blue)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_erf(erfs: Dict[str, torch.Tensor], path: str) -> None:
    """Effective receptive fields side by side, each normalised to its maximum, on a log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(erfs), figsize=(3.0 * len(erfs), 3.2), squeeze=False)
    for ax, (label, erf) in zip(axes[0], erfs.items()):
        rel = (erf / erf.max().clamp_min(1e-30)).clamp_min(1e-4)
        im = ax.imshow(rel.log10(), cmap='magma', vmin=-4, vmax=0)
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label='log10 |d centre / d input| (of max)')
    fig.suptitle('effective receptive fields of the last feature map\'s centre', fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main

def _safe(name: str) -> str:
    return name.replace('.', '_')


def analyse(model: nn.Module, name: str, images: torch.Tensor, pictures: Sequence[object], out: str,
            erf_models: Optional[Dict[str, nn.Module]] = None) -> Dict[str, object]:
    """Capture, measure and draw (the module docstring); returns what metrics.json holds."""
    os.makedirs(out, exist_ok=True)
    model.eval()
    captures = capture_kernels(model, images)
    if not captures:
        raise ValueError(f'--model {name!r} has no mixer that exposes its kernels (a kernels(x) method)')
    metrics = {'model': name, 'images': len(images), **model_metrics(captures, len(images))}
    figures = []
    first = next(iter(captures))
    with_bases = [n for n, c in captures.items() if c.base_weights is not None]
    for layer in dict.fromkeys(with_bases[:1] + with_bases[-1:]):  # the first and the last layer with bases
        figures.append(os.path.join(out, f'base_kernels_{_safe(layer)}.png'))
        plot_base_kernels(f'{name} {layer}', captures[layer].module, figures[-1])
        figures.append(os.path.join(out, f'dominant_base_{_safe(layer)}.png'))
        plot_dominant_bases(f'{name} {layer}', captures[layer], pictures, figures[-1])
    k = _window(captures[first].module)[0]
    if k is not None and captures[first].kernels.shape[2] == k * k:  # a window op: its maps can be drawn
        figures.append(os.path.join(out, f'attention_{_safe(first)}.png'))
        plot_attention(f'{name} {first}', captures[first], pictures, figures[-1])
    erfs = {name: effective_receptive_field(model.forward_features, images)}
    for label, other in (erf_models or {}).items():
        chans = resolve_data_config({}, model=other)['input_size'][0]
        if chans != images.shape[1]:
            raise ValueError(f'--erf: {label} takes {chans}-channel images, --model {name} {images.shape[1]}-channel')
        erfs[label] = effective_receptive_field(other.eval().forward_features, images)
    figures.append(os.path.join(out, 'erf.png'))
    plot_erf(erfs, figures[-1])
    metrics['figures'] = [os.path.basename(f) for f in figures]
    with open(os.path.join(out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=2)
    return metrics


def _model_spec(text: str) -> Tuple[str, Optional[str]]:
    name, _, ckpt = text.partition('=')
    return name, ckpt or None


def _label(name: str) -> str:
    """How figures name a model: a saved one (local-dir:.../resnet26_dw_k7, hf-hub:ORG/NAME) by its last part."""
    return name.split(':', 1)[1].rstrip('/').split('/')[-1] if name.startswith(SAVED_PREFIXES) else name


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    import timm_cada  # noqa: F401  (registers the models)
    parser = argparse.ArgumentParser(prog='python -m timm_cada.analysis', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='a timm_cada model (or any timm model with such mixers), or a '
                        'saved one with its weights: local-dir:FOLDER, hf-hub:ID')
    parser.add_argument('--checkpoint', default=None, help='its weights: a train.py checkpoint or a state dict')
    parser.add_argument('--image', nargs='+', required=True, help='images (two or more for context_sensitivity)')
    parser.add_argument('--out', required=True, help='folder for metrics.json and the PNGs')
    parser.add_argument('--erf', nargs='*', default=[], metavar='NAME[=CHECKPOINT]',
                        help='more models whose effective receptive fields are drawn beside the model\'s')
    parser.add_argument('--device-modules', nargs='*', default=[], metavar='MODULE',
                        help='modules to import first, e.g. one that registers your own mixer')
    args = parser.parse_args(argv)
    try:
        import_modules(args.device_modules)
    except ValueError as e:
        parser.error(f'--device-modules: {e}')
    try:
        model, data_args = load_model(args.model, args.checkpoint)
    except ModelLoadError as e:
        parser.error(e.named('--model', '--checkpoint'))
    try:
        images, pictures = load_images(args.image, model, data_args)
        others = {}
        for spec in args.erf:
            other, ckpt = _model_spec(spec)
            if _label(other) in others:
                parser.error(f'--erf: two models would be drawn as {_label(other)!r}; give each once')
            try:
                others[_label(other)] = load_model(other, ckpt)[0]
            except ModelLoadError as e:
                parser.error(e.named('--erf', '--erf'))
        metrics = analyse(model, _label(args.model), images, pictures, args.out, others)
    except ValueError as e:
        parser.error(str(e))
    cs = metrics['context_sensitivity']
    print(f'{args.model}: spatial_variation {metrics["spatial_variation"]:.4f}, context_sensitivity '
          + ('n/a (one image)' if cs is None else f'{cs:.4f}') + f' (mean of {len(metrics["layers"])} layers)')
    print(f'Wrote {os.path.join(args.out, "metrics.json")} and ' + ', '.join(metrics['figures']) + f' in {args.out}')
    return metrics


if __name__ == '__main__':
    main()
