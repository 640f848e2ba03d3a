"""The Gradio interface. It only wires components to ``RetrievalService``; no retrieval logic lives here."""

from __future__ import annotations

import functools
import inspect
import random
import types
from pathlib import Path
from typing import Optional

import gradio as gr
import gradio.blocks

from .attention import attention_maps
from .service import ENSEMBLE, Hit, QueryError, RetrievalService, open_image

INTRO = """# 🔎 USER image-text retrieval
Type what you are looking for, or give an image, and see which pictures and captions the model finds.
**SGE** builds its guide from the image regions themselves; **CGE** is guided by CLIP. *Ensemble* averages both.
"""
CSS = ".gt-note {color: #1a7f37; font-weight: 600}"


def _image_items(hits: list[Hit]) -> list[tuple[str, str]]:
    items = []
    for hit in hits:
        mark = "✅ ground truth · " if hit.is_ground_truth else ""
        items.append((str(hit.path), f"#{hit.rank} · {mark}score {hit.score:.3f} · {hit.label}"))
    return items


def _caption_rows(hits: list[Hit]) -> list[list]:
    return [[h.rank, round(h.score, 3), h.label, "✅" if h.is_ground_truth else ""] for h in hits]


def _status(result, truth_wanted: bool = True) -> str:
    parts = [f"{len(result.images)} results in {1000 * result.seconds:.0f} ms"]
    ranks = [h.rank for h in result.images if h.is_ground_truth]
    if truth_wanted and ranks:
        parts.append(f"the ground-truth image is at rank **{ranks[0]}**")
    if result.note:
        parts.append(f"⚠️ {result.note}")
    return " · ".join(parts)


def _user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err) if isinstance(err, (QueryError, ValueError)) else "something went wrong; try again")


def clear_errors(component, message: str):
    """Make a component's input check answer ``message`` (a gr.Error the client sees) instead of the generic
    error Gradio gives for an unexpected exception; Gradio's own clear errors pass through."""
    preprocess = component.preprocess

    def checked_preprocess(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as err:
            raise gr.Error(message.format(payload=repr(payload)[:40], error=type(err).__name__)) from err

    component.preprocess = checked_preprocess
    return component


def image_input(**kwargs) -> gr.Image:
    """An image upload whose unreadable files get a clear message."""
    return clear_errors(gr.Image(type="filepath", **kwargs), "this file could not be read as an image ({error})")


def top_k_slider(maximum: int, value: int) -> gr.Slider:
    return clear_errors(gr.Slider(1, maximum, value=value, step=1, label="How many results"),
                        "how many results must be a whole number, got {payload}")


def cache_component_signatures() -> None:
    """Make Gradio's per-session set-up cheap: every API call without a session (curl, REST clients) gets a
    new session, and Gradio builds it the config of every component on the page, calling
    ``inspect.signature(cls.__init__)`` for each — ~0.5 ms apiece, 56 components here, so most of the
    fixed cost of a REST call. A class's signature never changes, so ``gradio.blocks`` is given an
    ``inspect`` whose ``signature`` is memoised; every other name is the standard module's."""
    if gradio.blocks.inspect is not inspect:
        return  # done already (or replaced by someone else: left alone)
    cached = types.ModuleType("inspect")
    cached.__dict__.update(inspect.__dict__)

    @functools.lru_cache(maxsize=4096)
    def memoised(obj, **kwargs):
        return inspect.signature(obj, **kwargs)

    def signature(obj, **kwargs):
        try:
            return memoised(obj, **kwargs)
        except TypeError:  # unhashable callables are not memoised
            return inspect.signature(obj, **kwargs)

    cached.signature, cached.memoised_signature = signature, True
    gradio.blocks.inspect = cached


def serve_statically(root: Path) -> None:
    """Serve the gallery's files as they are (not hashed and copied into Gradio's cache on every result),
    and make its folder the first static path Gradio checks. Gradio resolves each result file against
    every static path in turn until one matches; its own icons come first otherwise, which costs two
    failed comparisons (≈ 0.3 ms) per image, ≈ 3 ms per top-10 answer."""
    from gradio.data_classes import _StaticFiles

    gr.set_static_paths([str(root)])
    resolved = Path(root).resolve()
    paths = _StaticFiles.all_paths
    paths[:] = [resolved] + [path for path in paths if path != resolved]


def build_demo(service: RetrievalService, title: str = "USER retrieval demo", gpu=None) -> gr.Blocks:
    """``gpu``: a decorator for the handlers that run a model (``spaces.GPU`` on ZeroGPU Spaces)."""
    gpu = gpu or (lambda fn: fn)
    cache_component_signatures()
    choices = service.model_choices
    default_model = ENSEMBLE if ENSEMBLE in choices else choices[0]
    captions = service.gallery.captions
    examples = random.Random(0).sample(captions, min(6, len(captions))) if captions else []
    picker_items = [(str(p), service.gallery.image_ids[i]) for i, p in enumerate((service.gallery.image_paths or [])[:60])]
    index_of = {}  # a gallery file (resolved path, then bare name) -> its index
    folders = {}  # each folder resolved once: resolving 1k files one by one costs ≈ 45 ms of start-up
    for i, path in enumerate(map(Path, service.gallery.image_paths or [])):
        if path.parent not in folders:
            folders[path.parent] = path.parent.resolve()
        index_of[str(folders[path.parent] / path.name)] = i
        index_of.setdefault(path.name, i)

    def gallery_index(value) -> int:
        image = value.get("image") if isinstance(value, dict) else None
        path = Path((image or {}).get("path") or "")
        for key in (str(path.resolve()), path.name):
            if key in index_of:
                return index_of[key]
        raise gr.Error("that image is not part of the gallery")

    if service.gallery.has_images:
        serve_statically(service.gallery.root)

    @gpu
    def search_text(query: str, model: str, k: float):
        try:
            result = service.search_text(query, model, k)
        except Exception as err:
            raise _user_error(err) from err
        return _image_items(result.images), _status(result)

    @gpu
    def search_image(image: Optional[str], model: str, k: float):
        try:
            result = service.search_image(image, model, k)
        except Exception as err:
            raise _user_error(err) from err
        return _caption_rows(result.captions), _image_items(result.images), _status(result, False)

    @gpu
    def search_gallery_image(index: float, model: str, k: float):
        try:
            result = service.search_image(None, model, k, gallery_index=int(index))
        except Exception as err:
            raise _user_error(err) from err
        path = str(service.gallery.image_paths[int(index)]) if service.gallery.has_images else None
        return path, _caption_rows(result.captions), _image_items(result.images), _status(result)

    @gpu
    def compare(query: str, image: Optional[str], k: float):
        try:
            summary = service.compare(text=query if query and query.strip() else None, image=image, k=k)
        except Exception as err:
            raise _user_error(err) from err
        galleries = [_image_items(summary["results"][name].images) for name in service.indexes]
        while len(galleries) < 2:
            galleries.append([])
        lines = []
        if "overlap" in summary:
            lines.append(f"**Agreement:** {100 * summary['overlap']:.0f}% of the top-{int(k)} images are the same.")
        if not summary["has_ground_truth"]:
            lines.append("No ground truth: the query is not one of the gallery's captions or images.")
        for name in service.indexes:
            rank, truth = summary["ground_truth_rank"][name], ""
            if summary["has_ground_truth"]:
                truth = f"ground truth at rank {rank}; " if rank else "ground truth not in the top results; "
            lines.append(f"- **{name}**: {truth}{len(summary['only_in'][name])} images only {name} found")
        return galleries[0], galleries[1], "\n".join(lines)

    @gpu
    def attention(image: Optional[str]):
        if image is None:
            raise gr.Error("upload an image or pick one from the gallery")
        try:
            pil = open_image(image)
            outputs = []
            for name in ("SGE", "CGE"):
                entry = service.indexes.get(name)
                if entry is None:
                    outputs += [None, None]
                    continue
                maps = attention_maps(entry.model, pil)
                outputs += [maps.guide, maps.enhancement]
        except Exception as err:
            raise _user_error(err) from err
        return outputs

    def random_query():
        return random.choice(captions) if captions else ""

    def about():
        info = service.about()
        lines = ["### Loaded models", "| model | source | enhancement | regions | text backbone | params | index |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in info["models"].items():
            lines.append(f"| {name} | `{m['source']}` | {m['enhancement']} | {m['regions']} | {m['text_backbone']} | "
                         f"{m['parameters'] / 1e6:.1f}M | {m['index']} |")
        gallery = info["gallery"]
        lines += ["", f"### Gallery\n`{gallery['root']}`: {gallery['images']} images, {gallery['captions']} captions.",
                  f"\n**Device:** {info['device']}"]
        if "recent_latency_ms" in info:
            lat = info["recent_latency_ms"]
            lines.append(f"\n**Recent queries:** median {lat['median']} ms over {lat['count']}.")
        metrics = service.gallery_metrics()
        if metrics:
            lines += ["", "### Retrieval quality on this gallery (R@K, %)",
                      "| model | image→text R@1 | R@5 | R@10 | text→image R@1 | R@5 | R@10 | rsum |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for name, m in metrics.items():
                lines.append(f"| {name} | {m['i2t_r1']:.1f} | {m['i2t_r5']:.1f} | {m['i2t_r10']:.1f} | {m['t2i_r1']:.1f} | "
                             f"{m['t2i_r5']:.1f} | {m['t2i_r10']:.1f} | {m['rsum']:.1f} |")
        return "\n".join(lines)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Text → Image", id="text"):
                with gr.Row():
                    query = gr.Textbox(label="Describe the image", placeholder="e.g. a large red circle to the left of a small blue star", scale=4)
                    random_button = gr.Button("🎲 Random caption", scale=1)
                with gr.Row():
                    model_text = gr.Radio(choices, value=default_model, label="Model")
                    k_text = top_k_slider(50, 10)
                search_button = gr.Button("Search", variant="primary")
                if examples:
                    gr.Examples(examples, inputs=query, label="Try a caption from the gallery", cache_examples=False)
                text_status = gr.Markdown()
                text_gallery = gr.Gallery(label="Images found (best first) — click one to search with it", columns=5,
                                          height="auto", object_fit="contain")
            with gr.Tab("Image → Text / Image", id="image"):
                with gr.Row():
                    with gr.Column():
                        query_image = image_input(label="Upload an image", height=260)
                        model_image = gr.Radio(choices, value=default_model, label="Model")
                        k_image = top_k_slider(50, 10)
                        image_button = gr.Button("Search with this image", variant="primary")
                    with gr.Column():
                        picker = gr.Gallery(picker_items, label="…or click a gallery image", columns=6, height=260,
                                            object_fit="contain", allow_preview=False)
                image_status = gr.Markdown()
                caption_table = gr.Dataframe(headers=["rank", "score", "caption", "ground truth"], label="Captions found",
                                             interactive=False, wrap=True)
                image_gallery = gr.Gallery(label="Similar images", columns=5, height="auto", object_fit="contain")
                picked_index = clear_errors(gr.Number(visible=False, precision=0), "the image index must be a number, got {payload}")
            with gr.Tab("SGE vs CGE", id="compare"):
                gr.Markdown("One query, both models: where do they agree, and what does each find alone?")
                with gr.Row():
                    compare_text = gr.Textbox(label="Text query", scale=3)
                    compare_image = image_input(label="…or an image", height=160, scale=2)
                k_compare = top_k_slider(20, 8)
                compare_button = gr.Button("Compare", variant="primary")
                compare_summary = gr.Markdown()
                with gr.Row():
                    sge_gallery = gr.Gallery(label="SGE", columns=4, height="auto", object_fit="contain")
                    cge_gallery = gr.Gallery(label="CGE", columns=4, height="auto", object_fit="contain")
            with gr.Tab("Attention", id="attention"):
                gr.Markdown("Which parts of the image each model's guide is built from, and which parts it enhances "
                            "(bright = more). CGE's guide comes from CLIP, so it has only the second map.")
                attention_image = image_input(label="Image", height=220)
                attention_button = gr.Button("Show attention", variant="primary")
                with gr.Row():
                    sge_guide = gr.Image(label="SGE: regions the guide is built from", height=260)
                    sge_enhance = gr.Image(label="SGE: regions enhanced by the guide", height=260)
                    cge_guide = gr.Image(label="CGE guide", visible=False)
                    cge_enhance = gr.Image(label="CGE: regions enhanced by the CLIP guide", height=260)
            with gr.Tab("About", id="about"):
                about_text = gr.Markdown()
                refresh = gr.Button("Refresh")

        text_outputs = [text_gallery, text_status]
        search_button.click(search_text, [query, model_text, k_text], text_outputs, api_name="search_text")
        query.submit(search_text, [query, model_text, k_text], text_outputs, api_visibility="private")
        random_button.click(random_query, None, query, api_name="random_query")
        image_outputs = [caption_table, image_gallery, image_status]
        image_button.click(search_image, [query_image, model_image, k_image], image_outputs, api_name="search_image")
        gallery_outputs = [query_image, caption_table, image_gallery, image_status]
        api_pick = gr.Button(visible=False)
        api_pick.click(search_gallery_image, [picked_index, model_image, k_image], gallery_outputs,
                       api_name="search_gallery_image")

        def search_selected(model: str, k: float, evt: gr.SelectData):
            """A click on any gallery image (picker or results) searches from that image. The clicked item
            names its file, so no per-session state is kept (API calls would each leave one behind)."""
            return (*search_gallery_image(gallery_index(evt.value), model, k), gr.Tabs(selected="image"))

        select_outputs = [*gallery_outputs, tabs]
        for source in (picker, text_gallery, image_gallery):
            source.select(search_selected, [model_image, k_image], select_outputs, api_visibility="private")
        compare_button.click(compare, [compare_text, compare_image, k_compare], [sge_gallery, cge_gallery, compare_summary],
                             api_name="compare")
        attention_button.click(attention, attention_image, [sge_guide, sge_enhance, cge_guide, cge_enhance],
                               api_name="attention")
        refresh.click(about, None, about_text, api_name="about")
        demo.load(about, None, about_text, api_visibility="private")
    return demo
