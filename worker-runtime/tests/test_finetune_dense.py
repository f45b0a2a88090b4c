"""task: finetune-seg / finetune-depth, run for real against an in-process stand-in for the orchestrator.

The harness replaces only the orchestrator: a TaskContext whose agent keeps
real Commands, collects the WorkerMessages the task sends, and serves a
trivial sequential data plan over synthetic shards. Models, data loading,
checkpoint files and the gloo process group are the real ones.
"""

from __future__ import annotations

import bisect
import gzip
import io
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker import distributed as D
from clipfleet_worker import synth
from clipfleet_worker.agent import Commands
from clipfleet_worker.data.writer import json_bytes, merge_sizes, write_atomic, write_shard
from clipfleet_worker.errors import CheckpointError, ConfigError, NonFiniteError
from clipfleet_worker.gen.clipfleet.v1 import common_pb2 as cpb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.models import build_clip, params_sha256, resolve_model_cfg
from clipfleet_worker.tasks import finetune_dense
from clipfleet_worker.tasks.common import FaultInjection, TaskContext

SIZE = 32


# ---------------------------------------------------------------- harness


class PlanAgent:
    """The orchestrator side of a rank: real Commands, collected messages, a sequential unshuffled plan."""

    def __init__(self, shards: list[tuple[str, int]], global_batch: int, rank: int, world_size: int, val: list[tuple[str, int]] | None = None) -> None:
        self.commands = Commands()
        self.lists = {"train": shards, "val": val or []}
        self.messages: list[pb.WorkerMessage] = []
        self.phases: list[tuple[int, str]] = []
        self.starts = [0]
        for _, n in shards:
            self.starts.append(self.starts[-1] + n)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.steps_per_epoch = self.starts[-1] // global_batch

    def send(self, msg: pb.WorkerMessage) -> None:
        self.messages.append(msg)

    def set_progress(self, step: int, phase: str) -> None:
        self.phases.append((step, phase))

    def shards(self, split: str = "train") -> list[tuple[str, int]]:
        return self.lists["val" if split == "val" else "train"]

    def plan(self, from_step: int, count: int, split: str = "train") -> list[pb.StepPlan]:
        per = self.global_batch // self.world_size
        out = []
        for step in range(from_step, from_step + count):
            first = (step % self.steps_per_epoch) * self.global_batch
            ids = list(range(first + self.rank * per, first + (self.rank + 1) * per))
            shards = [bisect.bisect_right(self.starts, i) - 1 for i in ids]
            out.append(pb.StepPlan(step=step, epoch=step // self.steps_per_epoch, sample_in_epoch=first, shards=shards,
                                   indices=[i - self.starts[s] for i, s in zip(ids, shards)], sample_ids=ids))
        return out

    def of(self, kind: str) -> list:
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("body") == kind]


def stage_cfg(task: str, data: dict, image: str = "vit-tiny", **over) -> dict:
    """A resolved StageSpec as the orchestrator sends it (Assignment.config_json)."""
    cfg = {
        "name": "main", "needs": [], "task": task, "seed": 7,
        "model": resolve_model_cfg(image, "text-tiny", embed_dim=32),
        "data": {"train": data["train"], "val": data["val"], "synth": None, "captions": {"alt": 1.0}, "caption_mode": "sample",
                 "augment": {"crop_scale": [0.8, 1.0], "crop_ratio": [0.75, 1.3333333], "hflip": 0.5},
                 "fraction": 1.0, "shuffle": False, "audit": False, "loader_threads": 2, "prefetch_steps": 4},
        "train": {"steps": 20, "epochs": None, "batch_size": 8, "micro_batch": None, "lr": 3e-3, "min_lr": 0.0,
                  "warmup_steps": 2, "schedule": "cosine", "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                  "grad_clip": 1.0, "precision": "auto", "on_nan": "fail", "log_every": 10, "threads": None, "deterministic": True},
        "checkpoint": {"every_steps": None, "every_minutes": None, "keep_last": 3, "keep_every_steps": None, "async": False,
                       "dir": None, "final": True},
        "eval": None,
        "init": {"kind": "random"},
        "freeze_backbone": False,
        "dense": {"num_classes": None, "ignore_index": 255, "depth_loss": "silog", "max_depth": 10.0, "head_width": 32},
    }
    for path, value in over.items():
        node = cfg
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def make_ctx(cfg: dict, data: dict, root: str, rank: int = 0, world_size: int = 1, attempt: int = 0, start_step: int = 0,
             init: pb.CheckpointRef | None = None, resume: pb.CheckpointRef | None = None, fault: str = "") -> TaskContext:
    """A TaskContext for one rank, with the assignment the orchestrator would hand it."""
    train = [(u, data["sizes"][os.path.basename(u)]) for u in data["train"]]
    val = [(u, data["sizes"][os.path.basename(u)]) for u in data["val"]]
    gb = int(cfg["train"]["batch_size"])
    agent = PlanAgent(train, gb, rank, world_size, val)
    a = pb.Assignment(
        rank=rank, world_size=world_size, backend="gloo", config_json=json.dumps(cfg), config_sha256="0" * 64,
        start_step=start_step, total_steps=int(cfg["train"]["steps"]), steps_per_epoch=agent.steps_per_epoch,
        global_batch=gb, per_rank_batch=gb // world_size, checkpoint_root=os.path.join(root, "ckpt"), attempt=attempt,
        stage="main", cursor=cpb.DataCursor(epoch=0, sample_in_epoch=0),
    )
    if init is not None:
        a.init.CopyFrom(init)
    if resume is not None:
        a.resume.CopyFrom(resume)
    return TaskContext(agent=agent, assignment=a, cfg=cfg, rank=rank, world_size=world_size, device=torch.device("cpu"),
                       writer=ckpt.CheckpointWriter(a.checkpoint_root, attempt, rank, False),
                       fault=FaultInjection(fault, rank, attempt))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def group():
    """A real gloo process group of one rank."""
    D.init_process_group("gloo", "127.0.0.1", free_port(), 0, 1)
    yield
    D.destroy()


def dataset(out: str, n_train: int = 32, n_val: int = 16, shards: int = 2) -> dict:
    r = synth.generate(synth.SynthParams(out=out, train=n_train, val=n_val, shards=shards, size=SIZE, seed=3))
    return {"train": r.train_shards, "val": r.val_shards, "sizes": r.sizes}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return dataset(str(tmp_path_factory.mktemp("synth")))


def clip_checkpoint(directory: str, image: str, seed: int = 11) -> tuple[pb.CheckpointRef, dict]:
    """A committed-looking CLIP checkpoint (model.pt only) and its state dict."""
    torch.manual_seed(seed)
    state = build_clip(resolve_model_cfg(image, "text-tiny", embed_dim=32), 259).state_dict()
    f = ckpt.write_atomic(directory, ckpt.MODEL_FILE, ckpt.serialize(state))
    ref = pb.CheckpointRef(dir=directory, step=5)
    ref.files.append(cpb.FileDigest(path=f.path, sha256=f.sha256, size=f.size))
    return ref, state


def losses(ctx: TaskContext) -> list[float]:
    return [s.loss for s in ctx.agent.of("step")]


def first_and_last_epoch(ls: list[float], steps_per_epoch: int = 4) -> tuple[float, float]:
    """Mean loss of the first and the last epoch: the same samples, so batch-to-batch noise cancels."""
    return float(np.mean(ls[:steps_per_epoch])), float(np.mean(ls[-steps_per_epoch:]))


# ---------------------------------------------------------------- training and metrics


def check_checkpoint_messages(ctx: TaskContext, steps: list[int]) -> None:
    written = ctx.agent.of("checkpoint")
    assert [w.step for w in written] == steps
    for w in written:
        assert sorted(f.path for f in w.files) == [ckpt.MODEL_FILE, ckpt.rank_file(0), ckpt.TRAINER_FILE]
        for f in w.files:
            assert ckpt.sha256_file(os.path.join(w.dir, f.path)) == f.sha256
            assert os.path.getsize(os.path.join(w.dir, f.path)) == f.size


def test_seg_learns_reports_metrics_and_checkpoints(group, data, tmp_path):
    cfg = stage_cfg("finetune-seg", data, checkpoint__every_steps=10)
    ctx = make_ctx(cfg, data, str(tmp_path))
    finetune_dense.run(ctx)
    steps = ctx.agent.of("step")
    assert [s.step for s in steps] == list(range(1, 21))
    first, last = first_and_last_epoch(losses(ctx))
    assert last < 0.6 * first, losses(ctx)
    assert all(s.out_of_range_labels == 0 and s.skipped_samples == 0 and not s.nan_skipped for s in steps)
    assert steps[3].sample_in_epoch == 32 and steps[4].epoch == 1  # 4 steps per epoch
    check_checkpoint_messages(ctx, [10, 20])
    (ev,) = ctx.agent.of("eval")
    per_class = {k: v for k, v in ev.metrics.items() if k.startswith("seg/IoU.")}
    assert ev.step == 20 and set(ev.metrics) - set(per_class) == {"seg/mIoU", "seg/mAcc", "seg/pixel_acc"}
    # Named from the dataset's classes.json; their mean is the mIoU.
    assert "seg/IoU.background" in per_class and set(per_class) <= {f"seg/IoU.{n}" for n in ("background", *synth.SHAPES)}
    assert ev.metrics["seg/mIoU"] == pytest.approx(sum(per_class.values()) / len(per_class))
    assert all(0.0 <= v <= 1.0 for v in ev.metrics.values())
    assert ev.metrics["seg/pixel_acc"] > 0.5  # background alone is most pixels; the model must at least get it
    (fin,) = ctx.agent.of("finished")
    assert fin.step == 20 and dict(fin.metrics) == dict(ev.metrics)
    state = ckpt.load(os.path.join(ctx.agent.of("checkpoint")[-1].dir, ckpt.MODEL_FILE))
    model, n = finetune_dense.build_model(ctx)
    model.load_state_dict(state)
    assert n == 9 and params_sha256(model) == fin.final_params_sha256


def test_depth_learns_with_mci_and_reports_depth_metrics(group, data, tmp_path):
    cfg = stage_cfg("finetune-depth", data, image="mci-tiny", eval={"batch_size": 5, "at_end": True, "every_steps": 10},
                    train__lr=1e-3, data__augment__crop_scale=None, data__augment__hflip=0.0)
    ctx = make_ctx(cfg, data, str(tmp_path))
    finetune_dense.run(ctx)
    first, last = first_and_last_epoch(losses(ctx))
    assert len(losses(ctx)) == 20 and last < 0.8 * first, losses(ctx)
    evals = ctx.agent.of("eval")
    assert [e.step for e in evals] == [10, 20]
    m = evals[-1].metrics
    assert set(m) == {"depth/rmse", "depth/abs_rel", "depth/delta1", "depth/delta2", "depth/delta3"}
    assert 0 < m["depth/rmse"] < 3 and 0 < m["depth/abs_rel"] < 1
    assert 0 <= m["depth/delta1"] <= m["depth/delta2"] <= m["depth/delta3"] <= 1
    assert m["depth/rmse"] < evals[0].metrics["depth/rmse"] * 1.5
    assert dict(ctx.agent.of("finished")[0].metrics) == dict(m)


@pytest.mark.parametrize("task", ["finetune-seg", "finetune-depth"])
def test_micro_batches_give_the_whole_slice_gradient(data, tmp_path, task):
    cfg = stage_cfg(task, data)
    ctx = make_ctx(cfg, data, str(tmp_path))
    model, _ = finetune_dense.build_model(ctx)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, SIZE, SIZE, generator=g)
    valid = torch.tensor([True, True, False, True, True, True])
    if task == "finetune-seg":
        target = torch.randint(0, 9, (6, SIZE, SIZE), generator=g)
        target[2] = 255
        target[4, :20] = 255
        mask = None
    else:
        target = 1 + 3 * torch.rand(6, SIZE, SIZE, generator=g)
        target[2] = 0
        target[3, :10] = 0
        mask = finetune_dense.depth_mask(target, valid, 10.0)
    grads, values = [], []
    for micro in (6, 2, 4):
        model.zero_grad(set_to_none=True)
        values.append(float(finetune_dense._forward_backward(model, finetune_dense.DENSE_KIND[task], cfg["dense"], images, target,
                                                             mask, micro, torch.cuda.amp.GradScaler(enabled=False), ctx, 1)))
        grads.append([p.grad.clone() for p in model.parameters()])
    for vs, gs in zip(values[1:], grads[1:]):
        assert vs == pytest.approx(values[0], rel=1e-5)
        for a, b in zip(gs, grads[0]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)



def test_depth_micro_batches_under_bf16_autocast_keep_every_gradient(data, tmp_path):
    """The depth path's no-grad pass inside autocast (a GPU step's bf16, run on CPU) must not leave
    the passes with gradient on weight copies without history: every parameter gets its gradient."""
    cfg = stage_cfg("finetune-depth", data)
    ctx = make_ctx(cfg, data, str(tmp_path))
    model, _ = finetune_dense.build_model(ctx)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, SIZE, SIZE, generator=g)
    target = 1 + 3 * torch.rand(6, SIZE, SIZE, generator=g)
    mask = finetune_dense.depth_mask(target, torch.ones(6, dtype=torch.bool), 10.0)
    grads = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            finetune_dense._forward_backward(model, "depth", cfg["dense"], images, target, mask, 2, torch.cuda.amp.GradScaler(enabled=False), ctx, 1)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], f"bf16={bf16}: no gradient for {missing[:3]}"
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None]))
    assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) > 0.98



def test_a_gpu_shaped_run_on_cpu_learns(group, data, tmp_path, monkeypatch, capsys):
    """The whole task as a GPU rank runs it, as far as a CPU can: bf16 autocast (forced on for CPU),
    micro-batches, train.compile (eager with its warning on torch 1.x), the device feeder."""
    from clipfleet_worker import accel

    real = accel.autocast_dtype
    monkeypatch.setattr(accel, "autocast_dtype", lambda precision, device_type, bf16: real(precision, "cuda", True))
    cfg = stage_cfg("finetune-seg", data, train__precision="bf16", train__micro_batch=4, train__compile=True)
    ctx = make_ctx(cfg, data, str(tmp_path))
    finetune_dense.run(ctx)
    first, last = first_and_last_epoch(losses(ctx))
    assert last < 0.7 * first, losses(ctx)
    assert ctx.agent.of("finished")[0].step == 20
    if not hasattr(torch, "compile"):
        assert "warning: train.compile ignored: torch 1." in capsys.readouterr().out


# ---------------------------------------------------------------- stop, resume, faults


def test_stop_with_checkpoint_then_resume_is_bit_exact(group, data, tmp_path):
    """Resume goes through checkpoint.load (weights_only), as in production."""
    cfg = stage_cfg("finetune-seg", data, train__steps=6)
    whole = make_ctx(cfg, data, str(tmp_path / "whole"))
    finetune_dense.run(whole)

    first = make_ctx(cfg, data, str(tmp_path / "split"))
    first.agent.commands.stop_at, first.agent.commands.stop_checkpoint = 3, True
    finetune_dense.run(first)
    assert [s.step for s in first.agent.of("step")] == [1, 2, 3]
    assert not first.agent.of("finished") and not first.agent.of("eval")
    (written,) = first.agent.of("checkpoint")
    assert written.step == 3 and (written.cursor.epoch, written.cursor.sample_in_epoch) == (0, 24)

    ref = pb.CheckpointRef(dir=written.dir, step=3, files=written.files)
    second = make_ctx(cfg, data, str(tmp_path / "split"), attempt=1, start_step=3, resume=ref)
    finetune_dense.run(second)
    assert [s.step for s in second.agent.of("step")] == [4, 5, 6]
    assert losses(first) + losses(second) == losses(whole)
    assert second.agent.of("finished")[0].final_params_sha256 == whole.agent.of("finished")[0].final_params_sha256
    assert dict(second.agent.of("eval")[0].metrics) == dict(whole.agent.of("eval")[0].metrics)


def test_injected_nan_skips_the_update_or_fails(group, data, tmp_path):
    cfg = stage_cfg("finetune-depth", data, train__steps=3, train__on_nan="skip", checkpoint__final=False)
    ctx = make_ctx(cfg, data, str(tmp_path / "skip"), fault="nan@2")
    finetune_dense.run(ctx)
    assert [s.nan_skipped for s in ctx.agent.of("step")] == [False, True, False]
    assert not ctx.agent.of("checkpoint") and ctx.agent.of("finished")

    cfg = stage_cfg("finetune-depth", data, train__steps=3, train__on_nan="fail")
    ctx = make_ctx(cfg, data, str(tmp_path / "fail"), fault="nan@2")
    with pytest.raises(NonFiniteError, match="step 2"):
        finetune_dense.run(ctx)
    assert [s.step for s in ctx.agent.of("step")] == [1]


# ---------------------------------------------------------------- initialisation


def test_init_loads_only_the_image_tower_of_a_clip_checkpoint(data, tmp_path):
    ref, clip_state = clip_checkpoint(str(tmp_path / "clip"), "vit-tiny")
    cfg = stage_cfg("finetune-seg", data, init={"kind": "checkpoint", "ref": "pretrain"})
    ctx = make_ctx(cfg, data, str(tmp_path), init=ref)
    model, _ = finetune_dense.build_model(ctx)
    report = finetune_dense.init_backbone(ctx, model)
    assert report is not None
    text_keys = {k for k in clip_state if not k.startswith("visual.")}
    assert "logit_scale" in text_keys and any(k.startswith("text.") for k in text_keys)
    assert text_keys <= set(report.dropped)
    assert not any(k.startswith(("text.", "logit_scale")) for k in model.state_dict())
    backbone = model.backbone.state_dict()
    assert report.loaded == len(backbone)
    for k, v in backbone.items():
        assert torch.equal(v, clip_state["visual." + k]), k
    # Random init draws from cfg.seed: two builds agree, another seed does not.
    rand_ctx = make_ctx(stage_cfg("finetune-seg", data), data, str(tmp_path))
    a, b = finetune_dense.build_model(rand_ctx)[0], finetune_dense.build_model(rand_ctx)[0]
    assert finetune_dense.init_backbone(rand_ctx, a) is None
    assert params_sha256(a) == params_sha256(b)
    other = finetune_dense.build_model(make_ctx(stage_cfg("finetune-seg", data, seed=8), data, str(tmp_path)))[0]
    assert params_sha256(other) != params_sha256(a)


def test_init_from_a_clip_with_another_image_tower_fails_before_training(group, data, tmp_path):
    ref, _ = clip_checkpoint(str(tmp_path / "clip"), "mci-tiny")
    cfg = stage_cfg("finetune-depth", data, init={"kind": "checkpoint", "ref": "pretrain"})
    ctx = make_ctx(cfg, data, str(tmp_path), init=ref)
    with pytest.raises(ConfigError, match=r"model\.image: .*mci tower, the model is vit.*missing: .*conv1\.weight"):
        finetune_dense.run(ctx)
    assert not ctx.agent.of("step") and not ctx.agent.of("checkpoint")


def test_frozen_backbone_from_checkpoint_keeps_its_weights(group, data, tmp_path):
    ref, clip_state = clip_checkpoint(str(tmp_path / "clip"), "mci-tiny")
    cfg = stage_cfg("finetune-seg", data, image="mci-tiny", train__steps=4, freeze_backbone=True,
                    init={"kind": "checkpoint", "ref": "pretrain"})
    ctx = make_ctx(cfg, data, str(tmp_path), init=ref)
    finetune_dense.run(ctx)
    (written,) = ctx.agent.of("checkpoint")
    state = ckpt.load(os.path.join(written.dir, ckpt.MODEL_FILE))
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert any("running_mean" in k for k in backbone)  # MCi's BatchNorm statistics stay frozen too
    for k, v in backbone.items():
        assert torch.equal(v, clip_state["visual." + k]), k
    fresh, _ = finetune_dense.build_model(ctx)
    assert not torch.equal(state["head.weight"], fresh.state_dict()["head.weight"])
    trainer = torch.load(os.path.join(written.dir, ckpt.TRAINER_FILE))  # our own file (see TORCH_1)
    n_trainable = sum(1 for p in fresh.parameters() if p.requires_grad)
    assert len(trainer["optimizer"]["state"]) == n_trainable < len(list(fresh.parameters()))


# ---------------------------------------------------------------- bad labels


def one_shard(out: str, edit) -> dict:
    """8 synthetic samples in one shard used as train and val; edit(i, members) changes sample i's members."""
    os.makedirs(out)
    samples = []
    for i in range(8):
        members = dict(synth.encode_scene(synth.render_scene(5, "train", i, SIZE)))
        edit(i, members)
        samples.append((f"train{i:08d}", list(members.items())))
    path = os.path.join(out, "train-00000.tar")
    write_shard(path, samples)
    sizes = merge_sizes(out, {"train-00000.tar": 8})
    write_atomic(os.path.join(out, "classes.json"), json_bytes(synth.class_names()))
    return {"train": [path], "val": [path], "sizes": sizes}


def test_out_of_range_class_ids_are_counted_ignored_and_warned_once(group, tmp_path, capsys):
    def edit(i, members):
        if i == 2:
            seg = np.array(Image.open(io.BytesIO(members["seg.png"])))
            seg[4:8, 10:14] = 200  # a class id the dataset does not have (9 classes), not the ignore label
            buf = io.BytesIO()
            Image.fromarray(seg, mode="L").save(buf, "PNG")
            members["seg.png"] = buf.getvalue()

    data = one_shard(str(tmp_path / "bad"), edit)
    cfg = stage_cfg("finetune-seg", data, train__steps=4, train__batch_size=4, data__augment__crop_scale=None,
                    data__augment__hflip=0.0, checkpoint__final=False)
    ctx = make_ctx(cfg, data, str(tmp_path))
    finetune_dense.run(ctx)
    # 8 samples, 4 per step: the bad one is in steps 1 and 3; resize-only keeps its 16 bad pixels.
    assert [s.out_of_range_labels for s in ctx.agent.of("step")] == [16, 0, 16, 0]
    assert capsys.readouterr().out.count("dense.num_classes (9)") == 1
    assert ctx.agent.of("eval")[0].metrics["seg/out_of_range_labels"] == 16


def test_skipped_samples_reported_by_reason_in_steps_and_evaluation_with_gzipped_maps(group, tmp_path):
    def edit(i, members):
        if i == 3:
            del members["seg.png"]
        if i == 5:
            members["seg.png.gz"] = gzip.compress(members.pop("seg.png"))  # read as seg.png

    data = one_shard(str(tmp_path / "gz"), edit)
    cfg = stage_cfg("finetune-seg", data, train__steps=2, train__batch_size=4, checkpoint__final=False)
    ctx = make_ctx(cfg, data, str(tmp_path))
    finetune_dense.run(ctx)
    steps = ctx.agent.of("step")
    # One epoch of 2 steps: the sample without a mask is met once, in whichever step the plan puts it.
    assert sorted(tuple(dict(s.skipped_by_reason).items()) for s in steps) == [(), (("no seg.png", 1),)]
    assert sorted(s.skipped_samples for s in steps) == [0, 1]
    (ev,) = ctx.agent.of("eval")
    assert dict(ev.skipped_by_reason) == {"no seg.png": 1}


# ---------------------------------------------------------------- two ranks


def _two_rank_main(rank: int, port: int, data: dict, root: str) -> None:
    torch.set_num_threads(1)
    D.init_process_group("gloo", "127.0.0.1", port, rank, 2)
    cfg = stage_cfg("finetune-seg", data, image="mci-tiny", train__steps=4)
    ctx = make_ctx(cfg, data, root, rank=rank, world_size=2)
    finetune_dense.run(ctx)
    result = {
        "losses": losses(ctx),
        "evals": [dict(e.metrics) for e in ctx.agent.of("eval")],
        "finished": [(f.final_params_sha256, dict(f.metrics)) for f in ctx.agent.of("finished")],
        "files": [sorted(f.path for f in w.files) for w in ctx.agent.of("checkpoint")],
        "dirs": [w.dir for w in ctx.agent.of("checkpoint")],
    }
    with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    D.destroy()


def test_two_gloo_ranks_agree_and_reduce_the_metrics(data, tmp_path):
    root = str(tmp_path)
    mp.spawn(_two_rank_main, args=(free_port(), data, root), nprocs=2, join=True)
    r0, r1 = (json.load(open(os.path.join(root, f"rank{r}.json"))) for r in (0, 1))
    assert len(r0["losses"]) == 4 and r0["losses"] == r1["losses"]
    assert r0["finished"] == r1["finished"]  # same weights, same reduced metrics on both ranks
    assert len(r0["evals"]) == 1 and r1["evals"] == []  # rank 0 reports the evaluation
    assert r0["files"] == [[ckpt.MODEL_FILE, ckpt.rank_file(0), ckpt.TRAINER_FILE]] and r1["files"] == [[ckpt.rank_file(1)]]
    assert r0["dirs"] == r1["dirs"]
    # The confusion matrices of the two halves of the split sum to the one-process evaluation.
    cfg = stage_cfg("finetune-seg", data, image="mci-tiny", train__steps=4)
    ctx = make_ctx(cfg, data, str(tmp_path / "one"))
    model, n = finetune_dense.build_model(ctx)
    model.load_state_dict(ckpt.load(os.path.join(r0["dirs"][0], ckpt.MODEL_FILE)))
    assert params_sha256(model) == r0["finished"][0][0]
    one, skipped = finetune_dense.evaluate_dense(ctx, model, n)
    assert skipped == {}
    assert one == pytest.approx(r0["evals"][0], abs=1e-6)
