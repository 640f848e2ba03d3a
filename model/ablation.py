"""The ablation table of the embedded default: no enhancement / SGE / CGE / SGE+CGE, each with and
without the MoCo queue term, and the miniature CLIP alone, on the synthetic test split.

    python -m model.ablation --work data/build --clip assets/mini-clip [--json data/build/ablation.json]

Every variant trains ``BuildSettings.ablation_epochs`` epochs (the same recipe for all); runs that
``python -m model.build_default`` already trained with those settings are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .build_default import BuildSettings, clip_regions, run_folder, train_user
from .data import frozen_text_features, load_split
from .evaluation import average_similarities, encode_split, format_table, retrieval_metrics
from .mini_clip import clip_similarities
from .parallel import run_side_by_side
from .user import USERModel


def test_similarities(best: Path, data: Path) -> torch.Tensor:
    model = USERModel.from_pretrained(best)
    test = load_split(data, "test", model.region_extractor)
    features = frozen_text_features(model, test.captions, data / "cache")  # cached: MiniLM runs once
    images, captions = encode_split(model, test, text_features=features)
    return images @ captions.t()


def run(work: Path, clip_dir: Path, settings: BuildSettings, train_missing: bool = True) -> dict[str, dict[str, float]]:
    data = work / "scenes"
    # Missing runs train in this order, two at a time: SGE and CGE first, then the baseline, then the queue
    # ablations (the cheapest last: it runs alone, on every core).
    variants = [("sge", True), ("cge", True), ("none", True), ("sge", False), ("cge", False), ("none", False)]

    epochs = settings.ablation_epochs

    def best_of(enhancement: str, use_queue: bool) -> Path:
        return run_folder(work / "runs", enhancement, use_queue, epochs) / "best"

    missing = [v for v in variants if not (best_of(*v) / "model.safetensors").is_file()]
    if train_missing and missing:
        clip_regions(data, clip_dir)  # once, here, rather than in each worker
        cores_free = work / "cores-free"
        run_side_by_side([(train_user, settings, data, clip_dir, work / "runs", *v, epochs, cores_free) for v in missing],
                         settings.jobs, cores_free)
    rows: dict[str, dict[str, float]] = {"mini CLIP alone": retrieval_metrics(clip_similarities(f"local-dir:{clip_dir}", data))}
    for use_queue in (False, True):
        suffix = "" if use_queue else " -queue"
        sims = {}
        for enhancement in ("none", "sge", "cge"):
            best = best_of(enhancement, use_queue)
            if not (best / "model.safetensors").is_file():
                continue
            sims[enhancement] = test_similarities(best, data)
            rows[f"{enhancement.upper() if enhancement != 'none' else 'no enh.'}{suffix}"] = retrieval_metrics(sims[enhancement])
        if "sge" in sims and "cge" in sims:
            rows[f"SGE+CGE{suffix}"] = retrieval_metrics(average_similarities([sims["sge"], sims["cge"]]))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="data/build")
    p.add_argument("--clip", default="assets/mini-clip")
    p.add_argument("--json", default=None)
    p.add_argument("--no-train", action="store_true", help="only evaluate the runs that exist (and the CLIP)")
    args = p.parse_args(argv)
    rows = run(Path(args.work), Path(args.clip).resolve(), BuildSettings(), train_missing=not args.no_train)
    print(format_table(rows.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
