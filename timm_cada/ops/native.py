""" The 'native' backend: fused C kernels for CPUs (the source is in `csrc/`), compiled on first use.

The tap-walking backends spend one PyTorch op per window offset, each a pass over a batch chunk in memory.
These kernels do a whole head of one sample at a time in cache: they copy the head's channels into
zero-padded stride phases, build each output row's per-pixel kernels from the CA parameters and the bases
(or take the given per-pixel kernels), and accumulate every tap in vector registers, several channels at
once; the backward is two such kernels (the input's gradient scattered into padded phases, the kernels'
gradient summed over a head's channels and folded into alpha's, the bases' and rel_pos' gradients row by
row). x, y, gy and grad_x are read and written in x's memory format, NCHW or channels_last, without a
conversion pass (only the copies into and out of a task's buffers see the layout; in channels_last a task
is a whole sample where the batch keeps the threads busy, and where a head's channels are whole vectors the
forward, the kernels' gradient and grad_x at strides 1 and 2 work on NHWC pixels directly, vectorised over
channels), and y and grad_x come back in x's layout. The
compute dtype follows x: float64 for float64, float32 for float32, float16 and bfloat16 (the output
in x's dtype, each gradient in its input's); any stride and dilation. Shapes and devices are checked before
any C runs (`_check`): the kernels index without bounds checks.

The source is plain C with GCC / Clang vector extensions and OpenMP, and no PyTorch headers: the first call
builds it with the system C compiler ($CC, else cc) in about a second, with -march=native, into a cache
directory ($TIMM_CADA_CACHE, else ~/.cache/timm_cada) keyed by the source, the compiler, its flags and the
CPU, and loads it with ctypes (the calls release the GIL). A cached build is loaded only from a file and a
directory chain that belong to this user (or root) and that no one else can write, as ssh treats its key
files; otherwise (a cache shared with others) it is built into a private temporary directory, with a warning
that says why (`_untrusted`). The (sample, head) tasks of a call run on
`torch.get_num_threads()` OpenMP threads; where PyTorch ships its own libgomp (Linux wheels) the library
binds to that one, already loaded, so the kernels run on PyTorch's intra-op threads (a pool of our own would
compete with PyTorch's spin-waiting threads for the cores after every op). Without a compiler (with
OpenMP) `native_available()` is False and 'auto' picks another backend; impl='native' raises.
Both operators are torch.library custom ops (`custom_ops.py`).
"""
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from .custom_ops import memory_format, register_cada, register_pixel_filter
from .reference import filter_output_size

__all__ = ['native_available', 'pixel_filter_native', 'cada_native']

_logger = logging.getLogger(__name__)

_SOURCES = ('cada_cpu.c', 'cada_cpu_kernels.h')
_FLAGS = ('-O3', '-std=gnu11', '-fopenmp', '-shared', '-fPIC')  # gnu11: ISO modes turn off fused multiply-add
_ARCH_FLAG = '-march=native'
# element type -> (suffix of the C functions, lanes per vector as in cada_cpu.c)
_TYPES = {torch.float32: ('f32', 8), torch.float64: ('f64', 4)}
_FUNCTIONS = {'cada_cpu_forward': 7, 'cada_cpu_backward_x': 7, 'cada_cpu_backward_k': 9}  # name -> arguments


def _cache_dir() -> Path:
    root = os.environ.get('TIMM_CADA_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'timm_cada')
    return Path(root) / 'native'


def _cpu_identity() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's model and feature flags."""
    ident = platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            ident += ''.join(sorted({ln for ln in f if ln.startswith(('model name', 'flags', 'Features'))}))
    except OSError:
        pass
    return ident


def _untrusted(path: Path) -> Optional[str]:
    """Why path (a file or directory) and every directory above it could hold another user's code, or None: as
    ssh checks its key files, each must belong to this user or root and be writable by no one else (a directory
    with the sticky bit, like /tmp, may be: others cannot rename or remove what is ours there)."""
    uid = os.getuid()
    p = Path(os.path.realpath(path))
    for part in (p, *p.parents):
        st = part.lstat()
        if st.st_uid not in (uid, 0):
            return f'{part} belongs to another user (uid {st.st_uid})'
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (part != p and st.st_mode & stat.S_ISVTX):
            return f'{part} is writable by its group or others (mode {stat.S_IMODE(st.st_mode):o})'
    return None


def _make_dirs(path: Path) -> None:
    """path and every missing directory above it, each made 0700 (mkdir's parents would follow the umask, and a
    group-writable directory that we made would then fail our own check)."""
    for part in reversed([path, *path.parents]):
        if not part.exists():
            try:
                part.mkdir(mode=0o700)
            except FileExistsError:
                pass


def _compile(cc: str, src_dir: Path, flags: List[str], out: Path) -> Optional[str]:
    """Build the library into out (atomically, mode 0700: a per-user cache is shared with no one); the compiler's
    complaint on failure, else None. OSError: the cache directory cannot be made or written."""
    _make_dirs(out.parent)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([cc, *flags, '-o', tmp, str(src_dir / _SOURCES[0])], capture_output=True, text=True)
        except OSError as e:
            return str(e)
        if proc.returncode != 0:
            return proc.stderr.strip()[-2000:] or f'{cc} exited with {proc.returncode}'
        os.chmod(tmp, 0o700)  # the linker's own mode follows the umask
        os.replace(tmp, out)
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _build_name(cc: str, flags: List[str]) -> str:
    """The cached library's file name: keyed by the source, the compiler, its flags and the CPU."""
    src_dir = Path(__file__).with_name('csrc')
    text = b''.join((src_dir / name).read_bytes() for name in _SOURCES)
    key = hashlib.sha256(b'\0'.join([text, cc.encode(), ' '.join(flags).encode(), _cpu_identity().encode()]))
    return f'cada_cpu_{key.hexdigest()[:16]}.so'


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[ctypes.CDLL], str]:
    """(the loaded library, '') or (None, why not); built once per source, compiler and CPU into the cache, or,
    where the cache or the build found there could hold another user's code, into a private temporary directory
    for this process (saying why once)."""
    cc = os.environ.get('CC', 'cc')
    if shutil.which(cc) is None:
        return None, f'no C compiler: {cc!r} is not on PATH (set CC to one)'
    src_dir = Path(__file__).with_name('csrc')
    # Resolved once, then checked, built into and loaded from as this one path: no link on the way to re-point.
    cache = Path(os.path.realpath(_cache_dir()))
    try:
        _make_dirs(cache)
        cache_why = _untrusted(cache)
    except OSError:
        cache_why = None  # _compile says that the cache cannot be written
    errors = []
    with contextlib.ExitStack() as stack:
        private = None  # a fresh 0700 directory, removed on return (a loaded library outlives its file)
        for flags in ([*_FLAGS, _ARCH_FLAG], list(_FLAGS)):  # without -march=native where the compiler lacks it
            path = cache / _build_name(cc, flags)
            why = cache_why or (_untrusted(path) if path.exists() else None)
            if why is not None:
                if private is None:
                    _logger.warning('not loading the native CADA kernels from %s: %s (make it writable by you alone, '
                                    'or set TIMM_CADA_CACHE to a private directory); building them privately',
                                    cache, why)
                    private = Path(os.path.realpath(stack.enter_context(tempfile.TemporaryDirectory('', 'timm_cada_'))))
                    private_why = _untrusted(private)
                    if private_why is not None:
                        errors.append(f'no private directory to build the kernels in: {private_why}')
                        break
                path = private / path.name
            if not path.exists():
                _logger.info('building the native CADA kernels: %s', path)
                try:
                    err = _compile(cc, src_dir, flags, path)
                except OSError as e:
                    errors.append(f'cannot build into {path.parent} ({e}); set TIMM_CADA_CACHE to a writable directory')
                    break
                if err is not None:
                    errors.append(f'the C compiler failed ({cc} {" ".join(flags)}): {err}')
                    continue
            lib = _bind(path, errors)
            if lib is not None:
                return lib, ''
    return None, '; '.join(errors)


def _bind(path: Path, errors: List[str]) -> Optional[ctypes.CDLL]:
    """The library at path with its functions' signatures set; None (the reason appended to errors) if it fails
    to load."""
    try:
        lib = ctypes.CDLL(str(path))
        for name, nargs in _FUNCTIONS.items():
            for suffix, _ in _TYPES.values():
                fn = getattr(lib, f'{name}_{suffix}')
                fn.argtypes = [ctypes.c_void_p] * (nargs - 1) + [ctypes.c_int64]  # pointers, then threads
                fn.restype = ctypes.c_int
    except (OSError, AttributeError) as e:  # an unloadable build: say so rather than fail every call
        errors.append(f'the build {path} failed to load: {e}')
        return None
    return lib


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing, never traces its file system calls
def native_available() -> bool:
    """Whether the kernels are built (building them on the first call) and loaded; the reason is logged if not."""
    lib, why = _load()
    if lib is None:
        _warn_once(why)
    return lib is not None


@functools.lru_cache(maxsize=None)
def _warn_once(why: str) -> None:
    _logger.warning("the 'native' CADA backend is unavailable (%s); 'auto' runs the PyTorch backends", why)


def _library() -> ctypes.CDLL:
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"impl='native' needs its C kernels built: {why}; or use impl='auto'")
    return lib


def _run(name: str, dtype: torch.dtype, prm: torch.Tensor, tensors: List[Optional[torch.Tensor]]) -> None:
    """C function `name` over all (sample, head) tasks, on torch's number of threads."""
    fn = getattr(_library(), f'{name}_{_TYPES[dtype][0]}')
    args = [prm.data_ptr()] + [t.data_ptr() if t is not None else None for t in tensors]
    if fn(*args, torch.get_num_threads()):
        raise MemoryError(f'timm_cada native {name}: a work buffer could not be allocated')


def _dtype(x: torch.Tensor) -> torch.dtype:
    """The compute dtype, which follows x: float64 for float64 inputs, float32 for every other one."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(x: torch.Tensor, maps: torch.Tensor, k: int, stride: int, dilation: int, nk: int,
           bases: Optional[torch.Tensor], rel_pos: Optional[torch.Tensor]) -> None:
    """What the C kernels index by without looking: every shape, the device, stride and dilation. The PyTorch
    backends fail on a mismatch inside their ops; C would read past the end of a buffer."""
    maps_name = 'attn' if bases is None else 'alpha'
    for name, t in (('x', x), (maps_name, maps), ('bases', bases), ('rel_pos', rel_pos)):
        if t is not None and t.device.type != 'cpu':
            raise RuntimeError(f"impl='native' runs on CPU tensors, got {name} on {t.device}; use impl='auto'")
    if stride < 1 or dilation < 1:
        raise ValueError(f'stride and dilation must be >= 1, got {stride} and {dilation}')
    if x.dim() != 4:
        raise ValueError(f'x must be (N, C, H, W), got shape {tuple(x.shape)}')
    N, C, H, W = x.shape
    G = maps.shape[1] if maps.dim() > 1 else 0
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    if maps.dim() != 5 or maps.shape[0] not in (1, N) or tuple(maps.shape[2:]) != (nk, Ho, Wo) or G < 1 or C % G:
        raise ValueError(f'{maps_name} must be (N or 1, G, {nk}, {Ho}, {Wo}) with G dividing the {C} channels of x, '
                         f'got {tuple(maps.shape)}')
    if bases is not None and (tuple(bases.shape) != (G, nk, k, k) or nk < 1):
        raise ValueError(f'bases must be ({G}, B >= 1, {k}, {k}) for alpha {tuple(maps.shape)}, got {tuple(bases.shape)}')
    if rel_pos is not None and tuple(rel_pos.shape) != (G, k, k):
        raise ValueError(f'rel_pos must be ({G}, {k}, {k}), got {tuple(rel_pos.shape)}')


def _params(x: torch.Tensor, maps: torch.Tensor, k: int, stride: int, dilation: int, nk: int, synth: bool,
            dtype: torch.dtype) -> Tuple[torch.Tensor, int, int]:
    """The int64 parameter vector of cada_cpu.c (its P_* order), Ho and Wo."""
    N, C, H, W = x.shape
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    prm = torch.tensor([N, C, H, W, maps.shape[1], k, stride, dilation, Ho, Wo, nk, int(synth),
                        int(maps.shape[0] == N), _TYPES[dtype][1], int(memory_format(x) == torch.channels_last)],
                       dtype=torch.int64)
    return prm, Ho, Wo


def _c(t: Optional[torch.Tensor], dtype: torch.dtype,
       fmt: torch.memory_format = torch.contiguous_format) -> Optional[torch.Tensor]:
    """t in the compute dtype, contiguous in fmt (a no-op where it is already)."""
    return t.to(dtype).contiguous(memory_format=fmt) if t is not None else None


def _map_grad(ga: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The per-sample gradient of alpha / attn, summed over the batch for a map the batch shares."""
    return (ga if maps.shape[0] == ga.shape[0] else ga.sum(0, keepdim=True)).to(maps.dtype)


def _forward(x: torch.Tensor, maps: torch.Tensor, k: int, stride: int, dilation: int, nk: int,
             bases: Optional[torch.Tensor] = None, rel_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    _check(x, maps, k, stride, dilation, nk, bases, rel_pos)
    dt = _dtype(x)
    prm, Ho, Wo = _params(x, maps, k, stride, dilation, nk, bases is not None, dt)
    fmt = memory_format(x)
    xc, mc, bc, rc = _c(x, dt, fmt), _c(maps, dt), _c(bases, dt), _c(rel_pos, dt)
    y = torch.empty(x.shape[0], x.shape[1], Ho, Wo, dtype=dt, memory_format=fmt)
    _run('cada_cpu_forward', dt, prm, [xc, mc, bc, rc, y])
    return y.to(x.dtype)  # keeps y's layout


def _backward(gy: torch.Tensor, x: torch.Tensor, maps: torch.Tensor, k: int, stride: int, dilation: int, nk: int,
              bases: Optional[torch.Tensor], rel_pos: Optional[torch.Tensor], need_x: bool, need_maps: bool,
              need_bases: bool, need_rel: bool) -> Tuple[torch.Tensor, ...]:
    """(grad_x, grad of alpha / attn, grad_bases, grad_rel_pos); an empty tensor for one not asked for."""
    N, C, H, W = x.shape
    G = maps.shape[1]
    dt = _dtype(x)
    prm, Ho, Wo = _params(x, maps, k, stride, dilation, nk, bases is not None, dt)
    fmt = memory_format(x)  # the kernels' layout of x, gy and grad_x: x's
    gyc, mc, bc, rc = _c(gy, dt, fmt), _c(maps, dt), _c(bases, dt), _c(rel_pos, dt)
    empty = x.new_empty(0)
    grad_x = grad_maps = grad_bases = grad_rel = empty
    if need_x:
        gx = torch.empty(N, C, H, W, dtype=dt, memory_format=fmt)
        _run('cada_cpu_backward_x', dt, prm, [gyc, mc, bc, rc, gx])
        grad_x = gx.to(x.dtype)
    need_bases = need_bases and bases is not None
    need_rel = need_rel and rel_pos is not None
    if need_maps or need_bases or need_rel:
        ga = torch.empty(N, G, nk, Ho, Wo, dtype=dt) if need_maps else None
        gw = torch.empty(N, G, nk, k, k, dtype=dt) if need_bases else None
        gr = torch.empty(N, G, k, k, dtype=dt) if need_rel else None
        _run('cada_cpu_backward_k', dt, prm, [gyc, _c(x, dt, fmt), mc, bc, ga, gw, gr])
        if ga is not None:
            grad_maps = _map_grad(ga, maps)
        if gw is not None and bases is not None:
            grad_bases = gw.sum(0).to(bases.dtype)
        if gr is not None and rel_pos is not None:
            grad_rel = gr.sum(0).to(rel_pos.dtype)
    return grad_x, grad_maps, grad_bases, grad_rel


def _pixel_filter_fwd(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    return _forward(x, attn, k, stride, dilation, k * k)


def _pixel_filter_bwd(gy, x, attn, k, stride, dilation, need_x, need_attn):
    return _backward(gy, x, attn, k, stride, dilation, k * k, None, None, need_x, need_attn, False, False)[:2]


def _cada_fwd(x, alpha, bases, rel_pos, stride, dilation):
    return _forward(x, alpha, bases.shape[-1], stride, dilation, bases.shape[1], bases, rel_pos)


def _cada_bwd(gy, x, alpha, bases, rel_pos, stride, dilation, need_x, need_alpha, need_bases, need_rel):
    return _backward(gy, x, alpha, bases.shape[-1], stride, dilation, bases.shape[1], bases, rel_pos,
                     need_x, need_alpha, need_bases, need_rel)


pixel_filter_native = register_pixel_filter(
    'pixel_filter_native', _pixel_filter_fwd, _pixel_filter_bwd,
    """`pixel_filter_reference` by the compiled CPU kernels. First-order gradients only.""")
cada_native = register_cada(
    'cada_native', _cada_fwd, _cada_bwd,
    """`cada_reference` by the compiled CPU kernels, kernels built row by row. First-order gradients only.""")
