"""Train USER with MoCo queues and UTO; keeps the best-rsum model on val as a Hub-format folder.

    python -m model.train --data DATA --text-backbone NAME_OR_PATH --out runs/sge [--enhancement cge]
    torchrun --nproc_per_node 2 -m model.train ...        # DDP (gloo on CPU, nccl on GPU)

Writes OUT/last.pt (resumable training state: --resume OUT/last.pt) and OUT/best/ (the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from .backbones import text_config_of
from .config import USERConfig
from .data import CaptionBatches, CaptionPairs, frozen_text_features, load_split
from .evaluation import evaluate_split
from .loss import UTO
from .moco import MomentumUSER
from .parallel import take_free_cores
from .regions import build_extractor
from .user import USERModel


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (SCAN precomputed or Karpathy JSON + images/)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="dev")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text-backbone", default="bert-base-uncased")
    p.add_argument("--freeze-text-backbone", action="store_true", help="reference the backbone instead of fine-tuning")
    p.add_argument("--enhancement", choices=["sge", "cge", "none"], default="sge")
    p.add_argument("--region-extractor", choices=["precomputed", "clip-grid"], default="precomputed")
    p.add_argument("--clip-model", default=None, help="open_clip name: hf-hub:org/repo, local-dir:path, or built-in")
    p.add_argument("--clip-pretrained", default=None)
    p.add_argument("--embed-dim", type=int, default=1024)
    p.add_argument("--max-text-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr-update", type=int, default=15, help="epochs before the learning rate drops x0.1 (step schedule)")
    p.add_argument("--lr-schedule", choices=["step", "cosine"], default="step",
                   help="step: the release's x0.1 drop after --lr-update epochs; cosine: linear warm-up over "
                        "--warmup-steps, then cosine decay to 0 at the last step (on the embedded default, "
                        "a 3-epoch cosine run of CGE reached val rsum 475, below the step schedule)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--backbone-lr-scale", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=2.0)
    p.add_argument("--queue-size", type=int, default=2048, help="K (2048 Flickr30K, 4096 COCO)")
    p.add_argument("--momentum", type=float, default=0.999)
    p.add_argument("--no-queue", action="store_true", help="mini-batch UTO only (ablation without MoCo)")
    p.add_argument("--mu", type=float, default=90.0)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--lambda-loss", type=float, default=20.0, help="20 Flickr30K, 1 COCO")
    p.add_argument("--no-augment", action="store_true", help="disable caption augmentation")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--val-images", type=int, default=None, help="evaluate on the first N val images only")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--take-cores-when", default=None, metavar="FILE",
                   help="use every core once FILE exists (a build running another job beside this one creates it)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="OUT/last.pt of an earlier run")
    return p.parse_args(argv)


def setup_distributed(device_name: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if device_name:
        device = torch.device(device_name)
    elif cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    return rank, world, device


def clip_reference(clip_model: str | None, checkpoint_dir: Path) -> str | None:
    """A ``local-dir:`` CLIP given relative to the working directory, re-expressed relative to the
    checkpoint folder (where from_pretrained resolves it), so the two can move together."""
    prefix = "local-dir:"
    if not clip_model or not clip_model.startswith(prefix):
        return clip_model
    clip_dir = Path(clip_model[len(prefix):]).expanduser().resolve()
    return prefix + os.path.relpath(clip_dir, checkpoint_dir.resolve())


def build_config(args, split) -> USERConfig:
    clip_dim = None if split.clip_embeds is None else int(split.clip_embeds.shape[1])
    return USERConfig(
        embed_dim=args.embed_dim,
        region_dim=int(split.regions.shape[2]),
        num_regions=int(split.regions.shape[1]),
        enhancement=args.enhancement,
        text_backbone=args.text_backbone,
        text_config=text_config_of(args.text_backbone),
        freeze_text_backbone=args.freeze_text_backbone,
        max_text_length=args.max_text_length,
        region_extractor=args.region_extractor,
        clip_model=clip_reference(args.clip_model, Path(args.out) / "best"),
        clip_pretrained=args.clip_pretrained,
        clip_dim=clip_dim,
    )


def make_optimizer(model: USERModel, args) -> torch.optim.Optimizer:
    backbone = [p for n, p in model.named_parameters() if n.startswith("txt_enc.bert.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("txt_enc.bert.") and p.requires_grad]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if backbone:
        groups.append({"params": backbone, "lr_scale": args.backbone_lr_scale})
    for group in groups:
        group["lr"] = args.lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def lr_factor(args, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``epoch``."""
    if args.lr_schedule == "step":
        return 0.1 if epoch >= args.lr_update else 1.0
    done, total = epoch * steps_per_epoch + step, args.epochs * steps_per_epoch
    if done < args.warmup_steps:
        return (done + 1) / args.warmup_steps
    progress = (done - args.warmup_steps) / max(1, total - args.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, args, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = args.lr * group["lr_scale"] * factor


def reseed_worker(_: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.pairs.rng.seed(info.seed)


def train_epoch(moco, trainer, loader, optimizer, args, device, epoch: int, is_main: bool) -> float:
    moco.train()
    total, steps = 0.0, len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch}", disable=not is_main, unit="step", mininterval=2.0)
    for step, batch in enumerate(bar):
        if step >= steps:
            break
        take_free_cores(args.take_cores_when)
        set_lr(optimizer, args, lr_factor(args, epoch, step, steps))
        batch = [None if x is None else x.to(device) for x in batch]
        loss, parts = trainer(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(moco.query.parameters(), args.grad_clip)
        optimizer.step()
        total += loss.item()
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v.item():.4f}" for k, v in parts.items()}, refresh=False)
    return total / max(steps, 1)


def save_training_state(path: Path, moco, optimizer, epoch: int, best_rsum: float, args) -> None:
    """Plain tensors and builtins only, so ``torch.load(weights_only=True)`` can read it back."""
    state = {
        "moco": moco.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best_rsum": best_rsum,
        "config": moco.query.config.to_dict(),
        "args": vars(args),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args.device)
    is_main = rank == 0
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    extractor = None
    if args.region_extractor == "clip-grid":
        extractor = build_extractor(USERConfig(region_extractor="clip-grid", clip_model=args.clip_model,
                                               clip_pretrained=args.clip_pretrained)).to(device)
    train_split = load_split(args.data, args.train_split, extractor)
    val_split = load_split(args.data, args.val_split, extractor)
    if args.val_images:
        val_split = val_split.subset(args.val_images)

    resume = torch.load(args.resume, map_location="cpu", weights_only=True) if args.resume else None
    config = USERConfig.from_dict(resume["config"]) if resume else build_config(args, train_split)
    model = USERModel(config)
    if not resume:
        model.load_text_backbone_weights()
    moco = MomentumUSER(model, args.queue_size, args.momentum, UTO(args.mu, args.gamma), args.lambda_loss,
                        use_queue=not args.no_queue).to(device)
    optimizer = make_optimizer(model, args)
    start_epoch, best_rsum = 0, -math.inf
    if resume:
        moco.load_state_dict(resume["moco"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, best_rsum = resume["epoch"] + 1, resume["best_rsum"]
    trainer = DistributedDataParallel(moco) if world > 1 else moco

    text_features = val_text_features = None
    if config.freeze_text_backbone:  # the backbone's output never changes: compute it once
        cache = Path(args.data) / "cache"
        val_text_features = frozen_text_features(model.to(device), val_split.captions, cache)
        if args.no_augment:
            text_features = frozen_text_features(model, train_split.captions, cache)
    pairs = CaptionPairs(train_split, model.tokenizer, config.max_text_length, augment=not args.no_augment,
                         seed=args.seed, text_features=text_features)
    sampler = DistributedSampler(pairs, seed=args.seed, drop_last=True) if world > 1 else RandomSampler(pairs)
    loader = DataLoader(CaptionBatches(pairs), sampler=BatchSampler(sampler, args.batch_size, drop_last=True),
                        batch_size=None, num_workers=args.workers, worker_init_fn=reseed_worker)
    history = []
    for epoch in range(start_epoch, args.epochs):
        if world > 1:
            sampler.set_epoch(epoch)
        started = time.time()
        mean_loss = train_epoch(moco, trainer, loader, optimizer, args, device, epoch, is_main)
        if is_main:
            metrics = evaluate_split(model, val_split, text_features=val_text_features)
            history.append({"epoch": epoch, "loss": mean_loss, "seconds": time.time() - started, **metrics})
            print(json.dumps(history[-1]), flush=True)
            if metrics["rsum"] > best_rsum:
                best_rsum = metrics["rsum"]
                model.eval_results = {f"{Path(args.data).name} {args.val_split}": metrics}
                model.save_pretrained(out / "best")
            save_training_state(out / "last.pt", moco, optimizer, epoch, best_rsum, args)
        if world > 1:
            dist.barrier()
    if is_main:
        (out / "history.json").write_text(json.dumps(history, indent=2))
    if world > 1:
        dist.destroy_process_group()
    return {"best_rsum": best_rsum, "history": history}


if __name__ == "__main__":
    main()
