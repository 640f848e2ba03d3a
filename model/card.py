"""Model cards: a README.md with a ``model-index`` block holding the measured R@K."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import USERConfig

METRIC_NAMES = {"rsum": "RSUM"}


def eval_results_of(metrics_by_dataset: dict[str, dict[str, float]]) -> list[EvalResult]:
    """{'dataset name': {'i2t_r1': .., 't2i_r1': .., 'rsum': ..}} -> EvalResult rows."""
    rows = []
    for dataset, metrics in metrics_by_dataset.items():
        for key, value in metrics.items():
            rows.append(
                EvalResult(
                    task_type="image-text-retrieval",
                    task_name="Image-Text Retrieval",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    metric_type=key,
                    metric_name=METRIC_NAMES.get(key, key.replace("_", " ").upper()),
                    metric_value=round(float(value), 2),
                )
            )
    return rows


def write_model_card(folder: Path, config: USERConfig, metrics: dict[str, dict[str, float]]) -> None:
    data = ModelCardData(
        model_name=f"USER-{config.enhancement.upper()}",
        license="mit",
        library_name="user-retrieval",
        tags=["image-text-retrieval", "user", config.enhancement],
        eval_results=eval_results_of(metrics) or None,
    )
    lines = [
        f"# USER-{config.enhancement.upper()}",
        "",
        "USER (Unified Semantic Enhancement with Momentum Contrast, Zhang et al., IEEE TIP 2024) image-text "
        "retrieval model: a dual encoder whose image regions are enhanced by a global guide "
        f"({config.enhancement.upper()}), pooled with GPO.",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| embedding size E | {config.embed_dim} |",
        f"| regions | {config.region_extractor}, R={config.num_regions}, D={config.region_dim} |",
        f"| text backbone | {config.text_backbone} ({'frozen, referenced' if config.freeze_text_backbone else 'fine-tuned, included'}) |",
    ]
    if config.clip_model:
        lines.append(f"| CLIP (referenced, frozen) | {config.clip_model} |")
    for dataset, values in metrics.items():
        lines += ["", f"## Results on {dataset}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in values.items()]
    lines += ["", "Load it with `USERModel.from_pretrained(...)` from this project's `model` package."]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    card.save(folder / "README.md")
