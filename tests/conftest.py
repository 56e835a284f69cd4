import os

import torch

# Without a GPU the 'triton' backend runs its kernels in Triton's interpreter, on CPU tensors: set before the
# backend's first call, which decides it.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# The test tensors are tiny: one intra-op thread is faster than two, and avoids OpenMP spin-waiting
# when the machine's two cores are shared with other processes.
torch.set_num_threads(1)
