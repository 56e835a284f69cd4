""" Parameter and MAC counts of the zoo's models.

MACs come from torch.utils.flop_counter for every conv and matmul, except inside the mixers registered
with the `window_op` trait, which are counted as their operator is defined (docs/design.md):
synthesising each pixel's attention map (G * B * k*k per pixel, when there are learned bases) plus
applying it (C * k*k per pixel), plus their submodules (CADA's CA generator) op by op. That figure
does not depend on which backend runs. Any other mixer, a user's included, is counted op by op.
"""
import os
import platform
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from timm_cada.layers import spec_of


def window_macs(mixer: nn.Module, out_shape: torch.Size) -> int:
    """MACs of a window-operator mixer's operator for one output of shape (N, C, Ho, Wo)."""
    n, c, h, w = out_shape
    kk = mixer.kernel_size * mixer.kernel_size
    macs = c * kk
    if getattr(mixer, 'bases', None) is not None:
        macs += mixer.num_heads * mixer.num_bases * kk
    return n * h * w * macs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)) -> int:
    """MACs of one forward pass on a single image of `input_size`."""
    outputs: List[Tuple[str, nn.Module, torch.Size]] = []
    hooks = []
    for name, m in model.named_modules():
        spec = spec_of(m)
        if spec is not None and spec.window_op:
            hooks.append(m.register_forward_hook(
                lambda mod, _, out, name=name: outputs.append((name, mod, out.shape))))
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    counts: Dict[str, Dict] = counter.get_flop_counts()
    root = type(model).__name__

    def counted(key: str) -> int:
        return sum(counts.get(key, {}).values()) // 2

    total = counted('Global')
    for name, mixer, out_shape in outputs:
        key = f'{root}.{name}'
        children = sum(counted(f'{key}.{child}') for child, _ in mixer.named_children())
        total += window_macs(mixer, out_shape) - counted(key) + children
    return total


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), e.g. 'AMD EPYC 7B13'."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
    except OSError:
        return name


def machine() -> str:
    """The machine a measurement ran on, e.g. 'AMD EPYC 7B13, 2 CPUs, no GPU'."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs, {gpu}'
