"""A DistributedDataParallel training script that runs unchanged under clipfleet (train_ddp.yaml) and plain torchrun.

    clipfleet run examples/byo/train_ddp.yaml                    # orchestrated: the spec's steps, batch, cadence
    torchrun --nproc-per-node 2 examples/byo/train_ddp.py        # local: init()'s arguments, ./clipfleet-checkpoints

Samples come from the plan (ctx.plan); model, optimizer and every rank's RNG
state go into each checkpoint, so a run resumed after a failure ends with
the very parameters of an uninterrupted one (the printed sha256).
"""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import clipfleet_worker

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
args = parser.parse_args()
# The script's defaults; a spec's train.steps, checkpoint.every_steps, data.num_samples, train.batch_size win.
ctx = clipfleet_worker.init(total_steps=args.steps, every_steps=10, num_samples=640, batch_size=16)
dist.init_process_group("gloo", init_method="env://")  # torchrun's variables; the orchestrator sets the same
torch.manual_seed(0)


def sample(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic regression data: sample i is a pure function of i."""
    g = torch.Generator().manual_seed(i)
    x = torch.randn(8, generator=g)
    return x, (x[:4] * x[4:]).sum().reshape(1)


net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1))
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
if ctx.resume_dir:
    # ctx.load checks each file against the digests of the checkpoint's manifest before loading it.
    net.load_state_dict(ctx.load("model.pt"))
    optimizer.load_state_dict(ctx.load("optimizer.pt"))
    torch.set_rng_state(ctx.load(ctx.rank_file("rng.pt"))["torch"])
model = DDP(net)

step = ctx.start_step
for step in range(ctx.start_step + 1, ctx.total_steps + 1):
    xs, ys = zip(*(sample(i) for i in ctx.plan(step)))
    loss = torch.nn.functional.mse_loss(model(torch.stack(xs)), torch.stack(ys))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    ctx.report(step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
    if ctx.should_checkpoint(step):
        with ctx.checkpoint(step) as d:
            if ctx.rank == 0:  # data-parallel ranks hold the same weights
                d.save("model.pt", net.state_dict())
                d.save("optimizer.pt", optimizer.state_dict())
            d.save(ctx.rank_file("rng.pt"), {"torch": torch.get_rng_state()})  # each rank's dropout draws
    if ctx.should_stop(step):
        break  # the orchestrator asked for a graceful stop; the checkpoint above was taken first

sha = clipfleet_worker.params_sha256(net)
if ctx.rank == 0:
    print(f"step {step} params sha256 {sha}", flush=True)
ctx.finish(params_sha256=sha)
# Every rank past its last collective before any tears gloo down: a peer closing its sockets
# mid-teardown can abort the other rank ("terminate called without an active exception").
dist.barrier()
dist.destroy_process_group()
