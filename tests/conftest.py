import torch

# The test tensors are tiny: one intra-op thread is faster than two, and avoids OpenMP spin-waiting
# when the machine's two cores are shared with other processes.
torch.set_num_threads(1)
