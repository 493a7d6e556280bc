import os

import pytest
import torch

# Tests run on CPU with few threads; the 2-core CI machine runs two workers.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
