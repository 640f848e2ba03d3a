"""Rebuild the embedded default bundle from scratch: synthetic scenes, a miniature CLIP, USER-SGE and
USER-CGE (MoCo + UTO, frozen all-MiniLM-L6-v2 text backbone), their model cards, and the gallery.

    python -m model.build_default                 # the committed bundle: about 44 minutes on 2 CPU cores
    python -m model.build_default --quick --out /tmp/bundle   # tiny sizes, a couple of minutes

Layout written to OUT (``assets/`` by default):
    mini-clip/   open_clip_config.json + open_clip_model.safetensors (float16)
    user-sge/    USER checkpoint (config.json references ../mini-clip and the text backbone)
    user-cge/    idem
    gallery/     dataset.json (test split) + images/
    manifest.json  what was built, with which settings, and the measured test metrics
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .backbones import text_config_of
from .config import USERConfig
from .data import find_karpathy_json, frozen_text_features, load_split, read_karpathy
from .evaluation import evaluate_split
from .mini_clip import MINI_CLIP_CONFIG, train_mini_clip
from .parallel import run_side_by_side, take_free_cores
from .regions import build_extractor
from .synthetic import generate
from .user import USERModel

TEXT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
QUICK_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 96, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@dataclass
class BuildSettings:
    counts: dict = field(default_factory=lambda: {"train": 20000, "val": 1000, "test": 1000})
    image_size: int = 96
    clip_config: dict = field(default_factory=lambda: MINI_CLIP_CONFIG)
    clip_epochs: int = 6  # with 5, both USER models were 6-15 val rsum lower after each of their first epochs
    # Epochs per USER variant, the last at lr x 0.1. SGE learns faster: val rsum 559.2 after 4 of 5 epochs,
    # before the lr drop; CGE needs all 5 (4 epochs: test t2i R@1 69.9). Fewer for SGE fall short: with 3
    # (and the 5-epoch CLIP) it ended at val R@1 72.3 / 66.1.
    user_epochs: dict = field(default_factory=lambda: {"sge": 4, "cge": 5})
    ablation_epochs: int = 5  # every variant of the ablation trains this long, whatever the bundle's
    embed_dim: int = 256
    batch_size: int = 128  # the paper's; more updates per epoch beat bigger batches here (val rsum after one
    # epoch: 458 at 128, 451 at 256, 436 at 512, in about the same time)
    queue_size: int = 2048
    momentum: float = 0.99  # key towers average over ~100 steps (~3 % of the run, as 0.999 does over the
    # release's ~30k steps); CGE, 4 epochs: val rsum 533.9 at 0.99 vs 528.3 at 0.999
    lambda_loss: float = 20.0
    lr: float = 2e-3
    seed: int = 0
    jobs: int = 2  # independent stages run side by side, one thread each (2 cores: 1.2-1.4x the throughput)

    @classmethod
    def quick(cls) -> "BuildSettings":
        return cls(counts={"train": 320, "val": 40, "test": 40}, clip_config=QUICK_CLIP_CONFIG, clip_epochs=1,
                   user_epochs={"sge": 1, "cge": 1}, ablation_epochs=1, embed_dim=32, batch_size=32, queue_size=128)


def run_folder(runs: Path, enhancement: str, use_queue: bool, epochs: int) -> Path:
    return runs / f"{enhancement}{'' if use_queue else '-noqueue'}-{epochs}ep"


def train_user(settings: BuildSettings, data: Path, clip_dir: Path, runs: Path, enhancement: str,
               use_queue: bool = True, epochs: Optional[int] = None, cores_free: Optional[Path] = None) -> Path:
    """Train one USER variant on the scenes (``epochs``: the bundle's for the variant unless given, the last
    at lr x 0.1); returns its best checkpoint folder."""
    from . import train

    epochs = settings.user_epochs[enhancement] if epochs is None else epochs
    out = run_folder(runs, enhancement, use_queue, epochs)
    args = ["--data", str(data), "--val-split", "val", "--out", str(out), "--text-backbone", TEXT_BACKBONE,
            "--freeze-text-backbone", "--no-augment", "--region-extractor", "clip-grid",
            "--clip-model", f"local-dir:{clip_dir}", "--enhancement", enhancement,
            "--embed-dim", str(settings.embed_dim), "--epochs", str(epochs),
            "--lr-update", str(max(1, epochs - 1)), "--batch-size", str(settings.batch_size),
            "--queue-size", str(settings.queue_size), "--momentum", str(settings.momentum),
            "--lambda-loss", str(settings.lambda_loss),
            "--lr", str(settings.lr), "--seed", str(settings.seed)]
    if not use_queue:
        args.append("--no-queue")
    if cores_free is not None:
        args += ["--take-cores-when", str(cores_free)]
    train.main(args)
    return out / "best"


def publish(best: Path, destination: Path, clip_reference: str, test_metrics: dict) -> USERModel:
    """Re-save a trained checkpoint into the bundle, its CLIP referenced relative to the bundle."""
    model = USERModel.from_pretrained(best)
    model.config.clip_model = clip_reference
    model.eval_results = {"synthetic-scenes test (1k images, 5k captions)": test_metrics}
    if destination.exists():
        shutil.rmtree(destination)
    model.save_pretrained(destination)
    return model


def copy_gallery(data: Path, destination: Path) -> None:
    """The test split's images and a Karpathy JSON holding only them."""
    dataset = json.loads((data / "dataset.json").read_text())
    test = [entry for entry in dataset["images"] if entry["split"] == "test"]
    if destination.exists():
        shutil.rmtree(destination)
    (destination / "images").mkdir(parents=True)
    for entry in test:
        shutil.copy2(data / "images" / entry["filename"], destination / "images" / entry["filename"])
    (destination / "dataset.json").write_text(json.dumps({"dataset": "synthetic-scenes", "images": test}))


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def text_backbone_features(data: Path, cores_free: Optional[Path] = None) -> None:
    """The frozen MiniLM's token features of every caption of every split, into the cache that training
    and evaluation read (the same key: backbone, max length, captions). Once the file ``cores_free``
    exists (a core is idle: see model.parallel), it takes every core."""
    model = USERModel(USERConfig(region_dim=1, text_backbone=TEXT_BACKBONE, text_config=text_config_of(TEXT_BACKBONE),
                                 freeze_text_backbone=True, enhancement="none"))
    model.load_text_backbone_weights()
    json_path = find_karpathy_json(data)
    for split in ("val", "test", "train"):
        frozen_text_features(model.eval(), read_karpathy(json_path, split)[1], data / "cache",
                             before_batch=lambda: take_free_cores(cores_free))


def clip_and_regions(settings: BuildSettings, data: Path, clip_dir: Path, cores_free: Optional[Path] = None) -> None:
    """Train the mini CLIP (unless ``clip_dir`` holds one already), then extract its regions."""
    if not (clip_dir / "open_clip_model.safetensors").is_file():
        train_mini_clip(data, clip_dir, settings.clip_config, settings.clip_epochs, seed=settings.seed,
                        before_step=lambda: take_free_cores(cores_free))
    take_free_cores(cores_free)
    clip_regions(data, clip_dir)


def clip_regions(data: Path, clip_dir: Path) -> None:
    """The CLIP's regions and embeddings of every split, into the cache that training reads."""
    extractor = build_extractor(USERConfig(region_extractor="clip-grid", clip_model=f"local-dir:{clip_dir}"))
    for split in ("train", "val", "test"):
        load_split(data, split, extractor)


def build(out: Path, work: Path, settings: BuildSettings, resume: bool = False) -> dict:
    started = time.time()
    data = work / "scenes"
    if not (data / "dataset.json").is_file():
        generate(data, settings.counts, seed=settings.seed, image_size=settings.image_size)
    timings = {"dataset_s": time.time() - started}
    clip_dir = out / "mini-clip"
    if not resume and clip_dir.exists():
        shutil.rmtree(clip_dir)
    # Two stages of two independent jobs, side by side; whichever finishes first hands its core over.
    t0 = time.time()
    cores_free = work / "cores-free"
    run_side_by_side([(clip_and_regions, settings, data, clip_dir, cores_free),
                      (text_backbone_features, data, cores_free)], settings.jobs, cores_free)
    timings["clip+regions+text_features_s"] = time.time() - t0
    t0 = time.time()
    variants = ("sge", "cge")
    bests = run_side_by_side([(train_user, settings, data, clip_dir, work / "runs", v, True, None, cores_free)
                              for v in variants], settings.jobs, cores_free)
    timings["user_training_s"] = time.time() - t0
    results = {}
    for enhancement, best in zip(variants, bests):
        model = USERModel.from_pretrained(best)
        test = load_split(data, "test", model.region_extractor)
        features = frozen_text_features(model, test.captions, data / "cache")  # computed in the first stage
        test_metrics = evaluate_split(model, test, text_features=features)
        publish(best, out / f"user-{enhancement}", "local-dir:../mini-clip", test_metrics)
        results[f"user-{enhancement}"] = test_metrics
    copy_gallery(data, out / "gallery")
    manifest = {
        "settings": asdict(settings),
        "text_backbone": TEXT_BACKBONE,
        "test_metrics": results,
        "timings_s": {k: round(v, 1) for k, v in {**timings, "total_s": time.time() - started}.items()},
        "sizes_bytes": {p.name: folder_size(p) for p in sorted(out.iterdir()) if p.is_dir()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets", help="bundle folder")
    p.add_argument("--work", default="data/build", help="scratch folder (dataset, runs, caches)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the pipeline in a couple of minutes")
    p.add_argument("--jobs", type=int, default=None, help="stages run side by side (default 2; 1: one after the other)")
    p.add_argument("--resume", action="store_true",
                   help="keep the stages an interrupted build finished (dataset, mini CLIP, cached features)")
    args = p.parse_args(argv)
    settings = BuildSettings.quick() if args.quick else BuildSettings()
    if args.jobs is not None:
        settings.jobs = args.jobs
    manifest = build(Path(args.out), Path(args.work), settings, args.resume)
    print(json.dumps({"test_metrics": manifest["test_metrics"], "timings_s": manifest["timings_s"],
                      "sizes_bytes": manifest["sizes_bytes"]}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
