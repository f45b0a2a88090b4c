"""Evaluation of a CLIP model on the held-out split, and `task: eval`.

Every rank encodes its contiguous block of the split; features are gathered
to rank 0 (padded tensors, no pickling), which computes retrieval R@k in
both directions (several captions per image, chunked) and zero-shot top-k
accuracy. All ranks meet in the same collectives, so evaluation cannot
leave one rank waiting in a training collective (open_clip #1024).

Retrieval queries are the held-out descriptions of each image: its captions
other than the AltText when it has any (e.g. VeCap), else the AltText;
`eval.captions` names the sources explicitly. The same queries are used
whatever captions the model was trained on, so variants stay comparable.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .. import distributed as D
from .. import openclip
from ..data.loader import EvalBatch, iterate_split, skip_counts, skips_by_reason
from ..data.shards import read_zero_shot
from ..data.sources import ShardSource
from ..evaluation import DEFAULT_TEMPLATES, retrieval_metrics, zero_shot_classifier, zero_shot_counts
from ..models import build_clip, params_sha256
from ..tokenizers import build_tokenizer
from .common import TaskContext, load_init_weights

KNOWN_SOURCES = ("alt", "vecap", "syn")


def gather_rows(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenation over ranks (rank order) of tensors whose first dimension differs by rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    n = torch.tensor([t.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def val_batches(ctx: TaskContext, batch_size: int, sources: tuple[str, ...]) -> Iterator[EvalBatch]:
    """This rank's contiguous block of the val split (val transform, in order) with every caption of `sources`."""
    cfg = ctx.cfg
    return iterate_split(
        ctx.agent.shards("val"),
        batch_size,
        int(cfg["model"]["image"]["image_size"]),
        caption_sources=sources,
        rank=ctx.rank,
        world_size=ctx.world_size,
        threads=int(cfg["data"].get("loader_threads") or 2),
        source=ShardSource.from_cfg(cfg),
    )


@torch.no_grad()
def evaluate_clip(ctx: TaskContext, model: torch.nn.Module, tokenizer: Any, step: int) -> dict[str, float]:
    """Retrieval and zero-shot metrics on the val shards, reported to the orchestrator.

    Rank 0 gets the metrics; other ranks get {}. The report also carries the
    val samples skipped, by reason, and a warning for each metric left out.
    """
    cfg, a = ctx.cfg, ctx.assignment
    ev = cfg.get("eval") or {}
    shards = ctx.agent.shards("val")
    if not shards:
        ctx.report_eval(step, {})
        return {}
    device = ctx.device
    context_length = int(cfg["model"]["text"]["context_length"])
    explicit = ev.get("captions")
    sources = tuple(explicit) if explicit else tuple(sorted(set(KNOWN_SOURCES) | set(cfg["data"]["captions"])))
    was_training = model.training
    model.eval()
    img_feats, labels, img_ids = [], [], []
    txt_feats, txt_owner = [], []
    reasons: dict[str, int] = {}
    for b in val_batches(ctx, int(ev.get("batch_size", 256)), sources):
        for r, n in b.skip_reasons.items():
            reasons[r] = reasons.get(r, 0) + n
        keep = [i for i, ok in enumerate(b.valid.tolist()) if ok]
        if not keep:
            continue
        img_feats.append(model.encode_image(b.images[keep].to(device)).float())
        labels.append(b.labels[keep].to(device))
        img_ids.append(torch.tensor([b.sample_ids[i] for i in keep], device=device))
        texts, owners = [], []
        for i in keep:
            caps = b.captions[i]
            chosen = [t for s in (explicit or [s for s in caps if s != "alt" and caps[s]] or ["alt"]) for t in caps.get(s, [])]
            texts.extend(chosen)
            owners.extend([b.sample_ids[i]] * len(chosen))
        if texts:
            txt_feats.append(model.encode_text(tokenizer(texts, context_length).to(device)).float())
            txt_owner.append(torch.tensor(owners, device=device))
    dim = int(cfg["model"]["embed_dim"])
    img = gather_rows(torch.cat(img_feats) if img_feats else torch.zeros((0, dim), device=device), device)
    ids = gather_rows(torch.cat(img_ids) if img_ids else torch.zeros((0,), dtype=torch.long, device=device), device)
    lab = gather_rows(torch.cat(labels) if labels else torch.zeros((0,), dtype=torch.long, device=device), device)
    txt = gather_rows(torch.cat(txt_feats) if txt_feats else torch.zeros((0, dim), device=device), device)
    own = gather_rows(torch.cat(txt_owner) if txt_owner else torch.zeros((0,), dtype=torch.long, device=device), device)
    skipped = skips_by_reason(D.all_reduce_sum(skip_counts(reasons), device))
    metrics: dict[str, float] = {}
    warnings: list[str] = []
    if ctx.rank == 0 and img.shape[0] > 0:
        position = {int(s): i for i, s in enumerate(ids.tolist())}
        if ev.get("retrieval", True) and txt.shape[0] > 0:
            txt_to_img = torch.tensor([position[int(o)] for o in own.tolist()], device=device)
            ks = tuple(int(k) for k in ev.get("recall_at", [1, 5, 10]))
            for k, v in retrieval_metrics(img, txt, txt_to_img, ks).items():
                if "_R@" in k:
                    metrics[f"retrieval/{k}"] = v
        if ev.get("retrieval", True) and txt.shape[0] == 0:
            warnings.append(f"retrieval skipped: no val sample has a caption from {', '.join(explicit or sources)}")
        if ev.get("zero_shot", True):
            warnings += _zero_shot(model, tokenizer, ev, shards[0][0], img, lab, context_length, metrics)
    if ctx.rank == 0 and img.shape[0] == 0:
        warnings.append("evaluation skipped: no val sample could be read")
    for w in warnings:
        print(f"clipfleet worker: warning: {w}", flush=True)
    ctx.report_eval(step, metrics, skipped_by_reason=skipped, warnings=warnings)
    D.barrier()
    if was_training:
        model.train()
    return metrics


def _zero_shot(model: torch.nn.Module, tokenizer: Any, ev: dict, shard: str, img: torch.Tensor, lab: torch.Tensor,
               context_length: int, metrics: dict[str, float]) -> list[str]:
    """Adds zeroshot/top-k to metrics; returns why it was left out or partial (warnings)."""
    classes = read_zero_shot(shard)
    if classes is None:
        if shard.startswith("pipe:"):
            return ["zero-shot skipped: a pipe: val source has no files next to it (classnames.txt, classes.json); serve it over http(s) or keep the val set local"]
        return [f"zero-shot skipped: no classnames.txt or classes.json (zero_shot) next to {shard} or in its parent directory"]
    names = classes.names
    labelled = lab >= 0
    if not bool(labelled.any()):
        return ["zero-shot skipped: no val sample has a class label (.json label/cls or a .cls member)"]
    warnings = []
    sel = labelled & (lab < len(names))
    if int(labelled.sum()) != int(sel.sum()):
        warnings.append(f"zero-shot: {int(labelled.sum()) - int(sel.sum())} val samples have a class label outside the "
                        f"{len(names)} classes of {classes.source}; left out of the accuracy")
        if not bool(sel.any()):
            return warnings
    templates = list(ev.get("templates") or classes.templates or DEFAULT_TEMPLATES)
    classifier = zero_shot_classifier(model, tokenizer, names, templates, context_length)
    ks = tuple(k for k in (1, 5) if k < len(names) or k == 1)
    counts = zero_shot_counts(img[sel], classifier, lab[sel], ks)
    n = max(1, counts.pop("count"))
    for k, v in counts.items():
        metrics[f"zeroshot/{k}"] = v / n
    return warnings


def run(ctx: TaskContext) -> None:
    """task: eval: evaluate the init checkpoint's CLIP model on the val split."""
    cfg = ctx.cfg
    tokenizer = build_tokenizer(cfg["model"]["tokenizer"])
    model = build_clip(cfg["model"], tokenizer.vocab_size).to(ctx.device)
    state = openclip.fit_state(load_init_weights(ctx.assignment), model.state_dict(), ctx.assignment.init.dir)
    model.load_state_dict(state)
    ctx.phase(0, "evaluating")
    metrics = evaluate_clip(ctx, model, tokenizer, 0)
    ctx.report_finished(0, params_sha256(model), metrics)
    print(f"clipfleet worker: evaluated {os.path.basename(ctx.assignment.init.dir)}", flush=True)
