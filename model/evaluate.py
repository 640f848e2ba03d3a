"""Evaluate USER checkpoints on a retrieval split and print the standard table.

    python -m model.evaluate --checkpoint NAME_OR_PATH --data PATH --split test [--json]

Several ``--checkpoint`` values are evaluated one by one and, with ``--ensemble``, together (averaged
similarities, the paper's SGE+CGE ensemble). A 5,000-image split (COCO) also gets the 5-fold 1K table.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .data import load_split
from .evaluation import average_similarities, encode_split, five_fold_metrics, format_table, retrieval_metrics
from .user import USERModel


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="Hub id or folder (repeatable)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--ensemble", action="store_true", help="also score the average of the checkpoints' similarities")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args(argv)


def split_metrics(sims: torch.Tensor) -> dict[str, dict[str, float]]:
    results = {"all": retrieval_metrics(sims)}
    if sims.size(0) == 5000:
        results["5-fold 1K"] = five_fold_metrics(sims)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    results: dict[str, dict[str, dict[str, float]]] = {}
    all_sims = []
    split = None
    for name in args.checkpoint:
        model = USERModel.from_pretrained(name, map_location=args.device)
        if split is None:
            split = load_split(args.data, args.split, model.region_extractor)
            if args.max_images:
                split = split.subset(args.max_images)
        images, captions = encode_split(model, split, args.batch_size)
        sims = images @ captions.t()
        all_sims.append(sims)
        results[name] = split_metrics(sims)
    if args.ensemble and len(all_sims) > 1:
        results["ensemble"] = split_metrics(average_similarities(all_sims))
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        print(f"{args.data} [{args.split}]: {len(split)} images, {len(split.captions)} captions")
        for protocol in ("all", "5-fold 1K"):
            rows = [(n[-17:], r[protocol]) for n, r in results.items() if protocol in r]
            if rows:
                print(f"\n{protocol}\n{format_table(rows)}")
    return results


if __name__ == "__main__":
    main()
