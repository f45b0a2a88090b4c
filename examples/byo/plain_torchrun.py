"""A plain torchrun script: no clipfleet import. Under clipfleet (plain_torchrun.yaml) it gets gang
placement, per-rank logs, exit detection, gang teardown and restarts, but starts from scratch each time.

    torchrun --nproc-per-node 2 examples/byo/plain_torchrun.py
"""

import hashlib

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", init_method="env://")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
rank, world_size = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = DDP(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
target = data.sum(dim=1, keepdim=True)

for step in range(1, 21):
    x, y = data[rank::world_size], target[rank::world_size]  # this rank's half
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

# The digest clipfleet_worker.params_sha256 computes: names, dtypes, shapes and bytes in key order.
h = hashlib.sha256()
state = model.module.state_dict()
for name in sorted(state):
    t = state[name].detach().cpu().contiguous()
    h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
if rank == 0:
    print(f"loss {loss.item():.5f} params sha256 {h.hexdigest()}", flush=True)
# Every rank past its last collective before any tears gloo down: a peer closing its sockets
# mid-teardown can abort the other rank ("terminate called without an active exception").
dist.barrier()
dist.destroy_process_group()
