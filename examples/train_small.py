"""A tiny regression trainer with one planted bug, small enough to fix and verify in a minute.

`torchdoctor chat examples/train_small.py --run "python train_small.py" --steps 6` walks the
whole review: the finding, its verified fix, approval, and the fix written to this file.
"""

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
target = data.sum(dim=1, keepdim=True)
for step in range(40):
    loss = ((model(data) - target) ** 2).mean()
    loss.backward()  # planted: gradients are never cleared
    optimizer.step()
