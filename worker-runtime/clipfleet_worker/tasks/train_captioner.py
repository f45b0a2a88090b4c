"""task: train-captioner. An image-to-text model (models/captioner.py) trained on one caption source.

The loop is pretrain's and the dense fine-tunes' (tasks/loop.py): the orchestrator's plan
feeds the batches, each step ends with sync_step (loss, control flags),
gradients are averaged over ranks in a fixed order, checkpoints and stops
happen at the same step on every rank, and a resumed run is bit-exact. The
target caption of a sample is drawn from `data.captions` exactly as for
pretraining (e.g. `{vecap: 1}`: the VeCap caption; a recaption stage's
`vecap.txt` member would be a source of its own). The loss is next-token
cross-entropy over the caption's tokens (EOT included, padding not): each
rank's mean over its own tokens, gradients averaged over ranks; with
micro-batches each one is weighted by its share of the slice's tokens.

Evaluation on the held-out split (every rank its block, sums and features
gathered to rank 0): the caption loss and perplexity against each image's
reference caption, then greedy captions for every image and, with
`eval.clip` (a CLIP checkpoint the orchestrator resolved and verified), how
often an image retrieves its own generated caption among all of them
(image -> generated caption R@1, chance 1/N), beside the same R@1 for the
reference captions (what a perfect captioner would reach with this CLIP).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt
from .. import distributed as D
from ..data.loader import Batch, skip_counts, skips_by_reason
from ..errors import CheckpointError, ConfigError
from ..models import build_clip, load_image_tower
from ..models.captioner import ImageCaptioner, build_captioner, caption_loss_sums
from ..tokenizers import build_tokenizer
from .common import TaskContext, load_init_weights, start_trainer
from .evaluate import gather_rows, val_batches
from .loop import compiled_forward, evaluating, run_training

TASK = "train-captioner"
# Captions printed by rank 0 at each evaluation, so a log shows what the model writes.
EXAMPLES = 3


def run(ctx: TaskContext) -> None:
    """Train the captioner on the plan's batches, checkpointing and stopping as coordinated; evaluate at the end."""
    cfg, a = ctx.cfg, ctx.assignment
    train = cfg["train"]
    device = ctx.device
    tokenizer = build_tokenizer(cfg["model"]["tokenizer"])
    context_length = int(cfg["decoder"]["context_length"])
    torch.manual_seed(int(cfg["seed"]))
    model = build_captioner(cfg, tokenizer).to(device)

    def init_fresh() -> None:
        if (cfg.get("init") or {}).get("kind") == "checkpoint":
            report = load_image_tower(model, load_init_weights(a))
            if ctx.rank == 0:
                print(f"clipfleet worker: captioner's image tower initialised from {a.init.dir}: {report.loaded} tensors", flush=True)

    optimizer, scaler = start_trainer(ctx, model, init_fresh)

    micro = int(train.get("micro_batch") or int(a.per_rank_batch))
    eval_cfg = cfg.get("eval")
    clip = _load_eval_clip(ctx) if eval_cfg else None
    forward = compiled_forward(ctx, model)

    def measure(step: int) -> dict[str, float]:
        return evaluate_captioner(ctx, model, tokenizer, clip, step)

    def forward_backward(batch: Batch, step: int) -> torch.Tensor:
        return _forward_backward(model, forward, batch.images, batch.tokens, micro, scaler, ctx, step)

    run_training(ctx, model, optimizer, scaler, TASK, lambda texts: tokenizer(texts, context_length), forward_backward, loss_name="caption loss",
                 evaluate=measure, evaluate_at_end=evaluating(ctx, measure) if eval_cfg and eval_cfg.get("at_end", True) else None)


def _forward_backward(model: ImageCaptioner, forward, images: torch.Tensor, tokens: torch.Tensor, micro: int, scaler: Any,
                      ctx: TaskContext, step: int) -> torch.Tensor:
    """This rank's loss (mean over its caption tokens), gradient accumulated; micro-batches weighted by their tokens."""
    n = images.shape[0]
    count = max(1, int((tokens[:, 1:] != model.pad_id).sum()))
    value = torch.zeros((), device=images.device)
    for i in range(0, n, micro):
        s, _ = caption_loss_sums(model, images[i : i + micro], tokens[i : i + micro], forward)
        loss = ctx.fault.loss(step, s / count)
        scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()
        value = value + loss.detach()
    return value


def _load_eval_clip(ctx: TaskContext) -> tuple[torch.nn.Module, Any] | None:
    """The CLIP of `eval.clip` (built from this stage's `model`), from the checkpoint the orchestrator verified; None without one."""
    a = ctx.assignment
    if not a.HasField("eval_clip") or not a.eval_clip.dir:
        return None
    tokenizer = build_tokenizer(ctx.cfg["model"]["tokenizer"])
    clip = build_clip(ctx.cfg["model"], tokenizer.vocab_size)
    checkpoint = ckpt.VerifiedCheckpoint.of(a.eval_clip)
    state = checkpoint.load(ckpt.MODEL_FILE)
    if not isinstance(state, dict):
        raise CheckpointError("model file does not hold a state dict", a.eval_clip.dir)
    try:
        clip.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{a.eval_clip.dir} is not a CLIP with this stage's model (model.image, model.text, model.embed_dim): {first}", "eval.clip") from None
    return clip.to(ctx.device).eval(), tokenizer


def _reference(captions: dict[str, list[str]], sources: tuple[str, ...]) -> str | None:
    """An image's reference caption: the first caption of the first of `sources` it has."""
    for s in sources:
        if captions.get(s):
            return captions[s][0]
    return None


@torch.no_grad()
def evaluate_captioner(ctx: TaskContext, model: ImageCaptioner, tokenizer: Any, clip: tuple[torch.nn.Module, Any] | None, step: int) -> dict[str, float]:
    """Held-out caption loss and perplexity; with a CLIP, image -> generated caption R@1 against chance. Rank 0 gets the metrics."""
    cfg, a = ctx.cfg, ctx.assignment
    ev = cfg.get("eval") or {}
    device = ctx.device
    if not ctx.agent.shards("val"):
        ctx.report_eval(step, {})
        return {}
    probs = cfg["data"]["captions"]
    explicit = ev.get("captions")
    # The reference caption: eval.captions in order, else the training sources, most likely first.
    sources = tuple(explicit) if explicit else tuple(sorted((s for s, p in probs.items() if p > 0), key=lambda s: (-probs[s], s)))
    context_length = int(cfg["decoder"]["context_length"])
    max_tokens = context_length - 1
    was_training = model.training
    model.eval()
    loss_sum, token_count, empty, words = 0.0, 0, 0, 0
    img_feats, gen_feats, ref_feats, ids = [], [], [], []
    examples: list[str] = []
    reasons: dict[str, int] = {}
    for b in val_batches(ctx, int(ev.get("batch_size", 256)), sources):
        for r, n in b.skip_reasons.items():
            reasons[r] = reasons.get(r, 0) + n
        keep = [i for i, ok in enumerate(b.valid.tolist()) if ok and _reference(b.captions[i], sources) is not None]
        if not keep:
            continue
        images = b.images[keep].to(device)
        refs = [_reference(b.captions[i], sources) or "" for i in keep]
        tokens = tokenizer(refs, context_length).to(device)
        s, n = caption_loss_sums(model, images, tokens)
        loss_sum += float(s)
        token_count += int(n)
        generated = [tokenizer.decode(row) for row in model.generate(images, max_tokens).tolist()]
        empty += sum(1 for t in generated if not t.strip())
        words += sum(len(t.split()) for t in generated)
        if len(examples) < EXAMPLES:
            examples += [f"{b.keys[i]}: {t!r} (reference {r!r})" for i, t, r in zip(keep, generated, refs)][: EXAMPLES - len(examples)]
        ids.append(torch.tensor([b.sample_ids[i] for i in keep], device=device))
        if clip is not None:
            clip_model, clip_tok = clip
            ctx_len = int(cfg["model"]["text"]["context_length"])
            img_feats.append(clip_model.encode_image(images).float())
            gen_feats.append(clip_model.encode_text(clip_tok(generated, ctx_len).to(device)).float())
            ref_feats.append(clip_model.encode_text(clip_tok(refs, ctx_len).to(device)).float())
    sums = D.all_reduce_sum([loss_sum, float(token_count), float(empty), float(words)], device)
    n_img = gather_rows(torch.cat(ids) if ids else torch.zeros((0,), dtype=torch.long, device=device), device).shape[0]
    skipped = skips_by_reason(D.all_reduce_sum(skip_counts(reasons), device))
    metrics: dict[str, float] = {}
    warnings: list[str] = []
    if clip is not None:
        dim = int(cfg["model"]["embed_dim"])
        empty_feats = torch.zeros((0, dim), device=device)
        img = gather_rows(torch.cat(img_feats) if img_feats else empty_feats, device)
        gen = gather_rows(torch.cat(gen_feats) if gen_feats else empty_feats, device)
        ref = gather_rows(torch.cat(ref_feats) if ref_feats else empty_feats, device)
        if ctx.rank == 0 and img.shape[0] > 0:
            metrics["caption/clip_i2t_R@1"] = recall_at_1(img, gen)
            metrics["caption/reference_i2t_R@1"] = recall_at_1(img, ref)
            metrics["caption/chance_R@1"] = 1.0 / img.shape[0]
    elif ctx.rank == 0:
        warnings.append("retrieval check skipped: no eval.clip")
    if ctx.rank == 0:
        if sums[1] > 0:
            metrics["caption/loss"] = sums[0] / sums[1]
            metrics["caption/perplexity"] = math.exp(min(50.0, sums[0] / sums[1]))
        if n_img > 0:
            metrics["caption/empty_fraction"] = sums[2] / n_img
            metrics["caption/mean_words"] = sums[3] / n_img
            metrics["caption/image_count"] = float(n_img)
        else:
            warnings.append(f"evaluation skipped: no val sample could be read with a caption from {', '.join(sources)}")
        for e in examples:
            print(f"clipfleet worker: caption at step {step}: {e}", flush=True)
        for w in warnings:
            print(f"clipfleet worker: warning: {w}", flush=True)
    ctx.report_eval(step, metrics, skipped_by_reason=skipped, warnings=warnings)
    D.barrier()
    if was_training:
        model.train()
    return metrics


def recall_at_1(images: torch.Tensor, texts: torch.Tensor) -> float:
    """Fraction of images i whose most similar text (cosine) is text i; ties go to the lowest index."""
    sim = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    hits = sim.argmax(dim=1) == torch.arange(images.shape[0], device=images.device)
    return float(hits.float().mean())
