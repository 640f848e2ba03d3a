"""The app through gradio_client against a launched server (loopback): every endpoint, and bad input."""

import random
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError


@pytest.fixture(scope="module")
def client(demo_url):
    url, service = demo_url
    return Client(url, verbose=False), service


def test_search_text(client):
    client, service = client
    caption = service.gallery.captions[3]
    gallery, status = client.predict(caption, "Ensemble", 12, api_name="/search_text")
    assert len(gallery) == 12 and all(item["image"] for item in gallery)
    assert "results in" in status and "ground-truth image is at rank" in status
    marked = [item for item in gallery if "ground truth" in item["caption"]]
    truth = int(service.gallery.caption_image[3])
    assert len(marked) == 1 and service.gallery.captions[service.gallery.captions_of(truth)[0]] in marked[0]["caption"]


def test_search_image_upload_and_gallery_pick(client):
    client, service = client
    path = str(service.gallery.image_paths[2])
    label = service.gallery.captions[service.gallery.captions_of(2)[0]]
    table, gallery, status = client.predict(handle_file(path), "SGE", 4, api_name="/search_image")
    assert label in gallery[0]["caption"] and len(table["data"]) == 4
    query, table, gallery, status = client.predict(2, "CGE", 4, api_name="/search_gallery_image")
    assert label in gallery[0]["caption"] and "ground truth" in gallery[0]["caption"]


def test_compare_attention_about(client):
    client, service = client
    sge, cge, summary = client.predict(service.gallery.captions[0], None, 4, api_name="/compare")
    assert len(sge) == len(cge) == 4 and "Agreement" in summary and "No ground truth" not in summary
    _, _, made_up = client.predict("seven shapes in a row", None, 4, api_name="/compare")
    assert "No ground truth" in made_up and "not in the top results" not in made_up
    maps = client.predict(handle_file(str(service.gallery.image_paths[0])), api_name="/attention")
    assert maps[0] is not None and maps[1] is not None and maps[3] is not None
    about = client.predict(api_name="/about")
    assert "SGE" in about and "Gallery" in about
    assert isinstance(client.predict(api_name="/random_query"), str)


@pytest.mark.parametrize("args, message", [
    (("", "SGE", 5), "type a description"),
    (("a red circle", "SGE", 0), "less than minimum value 1"),
    (("a red circle", "nope", 5), "not in the list of choices"),
])
def test_bad_text_input_gets_a_message_and_the_server_keeps_serving(client, args, message):
    client, service = client
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/search_text")
    gallery, _ = client.predict("a small blue star", "SGE", 3, api_name="/search_text")
    assert len(gallery) == 3


def test_bad_image_gets_a_message(client, tmp_path):
    client, _ = client
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(AppError, match="could not be read"):
        client.predict(handle_file(str(bad)), "SGE", 3, api_name="/search_image")
    with pytest.raises(AppError, match="upload an image"):
        client.predict(None, "SGE", 3, api_name="/search_image")


@pytest.mark.parametrize("args, message", [
    (("a red circle", "SGE", -4), "less than minimum value 1"),
    (("a red circle", "SGE", "ten"), "must be a whole number, got .ten."),
    (("\x00\x07  \t", "SGE", 5), "type a description"),
])
def test_more_bad_parameters(client, args, message):
    client, _ = client
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/search_text")
    assert len(client.predict("a large red circle", "CGE", 2, api_name="/search_text")[0]) == 2


def test_long_and_unusual_text(client):
    client, service = client
    gallery, status = client.predict("a red circle " * 800, "SGE", 3, api_name="/search_text")  # 10,400 characters
    assert len(gallery) == 3 and "cut" in status
    for text in ["😀 a red circle 🔴", "مربع أحمر على اليسار", "红色的圆", "a\u202eright-to-left", "tab\tand\rreturn"]:
        gallery, status = client.predict(text, "Ensemble", 3, api_name="/search_text")
        assert len(gallery) == 3 and "results in" in status
    with pytest.raises(AppError, match="greater than maximum value"):
        client.predict("a red circle", "SGE", 10_000, api_name="/search_text")


def _image_files(tmp_path):
    from test_service import animated_gif, jpeg_bytes, palette_with_transparency, png_bytes
    from PIL import Image

    good = {
        "cmyk.jpg": jpeg_bytes(Image.new("CMYK", (30, 30), (0, 255, 255, 0))),
        "gray16.png": png_bytes(Image.new("I;16", (30, 30), 40000)),
        "palette.png": palette_with_transparency(),
        "animated.gif": animated_gif(),
        "tiny.png": png_bytes(Image.new("RGB", (1, 1), "red")),
        "strip.png": png_bytes(Image.new("RGB", (10000, 10), "blue")),
    }
    bad = {
        "empty.png": b"",
        "random.png": bytes(random.Random(1).getrandbits(8) for _ in range(4096)),  # fixed: reproducible
        "truncated.jpg": jpeg_bytes(Image.new("RGB", (64, 64), "red"))[:200],
        "bomb.png": png_bytes(Image.new("1", (30000, 30000))),
    }
    paths = {}
    for name, data in {**good, **bad}.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    return {n: paths[n] for n in good}, {n: paths[n] for n in bad}


def test_every_kind_of_upload_works_or_gets_a_message(client, tmp_path):
    client, _ = client
    good, bad = _image_files(tmp_path)
    for name, path in good.items():
        table, gallery, status = client.predict(handle_file(path), "SGE", 3, api_name="/search_image")
        assert len(gallery) == 3, name
    for name, path in bad.items():
        with pytest.raises(AppError, match="could not be read|megapixels|empty"):
            client.predict(handle_file(path), "SGE", 3, api_name="/search_image")
        table, gallery, status = client.predict(handle_file(good["tiny.png"]), "CGE", 2, api_name="/search_image")
        assert len(gallery) == 2, f"the server did not recover after {name}"


def test_only_gallery_files_are_served(client, demo_url):
    import httpx

    client, service = client
    url = demo_url[0].rstrip("/")
    inside = service.gallery.image_paths[0].resolve()
    assert httpx.get(f"{url}/gradio_api/file={inside}").status_code == 200
    outside = [Path(__file__).resolve(), Path("/etc/passwd"), service.gallery.root.parent / "user-sge" / "config.json"]
    for path in outside:
        response = httpx.get(f"{url}/gradio_api/file={path}")
        assert response.status_code in (403, 404), (path, response.status_code)


def test_memoised_signatures_give_the_same_session_configs():
    """cache_component_signatures only makes Gradio's per-session set-up cheaper: same configs."""
    import inspect

    import gradio.blocks
    from gradio.state_holder import SessionState

    from app.ui import cache_component_signatures

    with gr.Blocks() as demo:
        gr.Textbox(value="a", label="t")
        gr.Gallery([("x.png", "x")], columns=3)
        gr.Slider(1, 5, value=2)
        gr.Dataframe(headers=["a", "b"])
    patched = gradio.blocks.inspect
    try:
        gradio.blocks.inspect = inspect
        plain = SessionState(demo).config_values
        cache_component_signatures()
        assert gradio.blocks.inspect is not inspect and gradio.blocks.inspect.isclass is inspect.isclass
        assert SessionState(demo).config_values == plain
        assert SessionState(demo).config_values == plain  # from the memo
    finally:
        gradio.blocks.inspect = patched


def test_gallery_is_the_first_static_path_and_its_files_stay_static(client):
    """serve_statically puts the gallery ahead of Gradio's own icons; its files are still static (served
    as they are, never copied into the cache) and nothing else becomes static."""
    from gradio.data_classes import _StaticFiles
    from gradio.utils import is_static_file

    from app.ui import serve_statically

    _, service = client
    root = service.gallery.root.resolve()
    serve_statically(root)
    serve_statically(root)  # idempotent: one entry, first
    assert _StaticFiles.all_paths[0] == root and _StaticFiles.all_paths.count(root) == 1
    assert is_static_file(str(service.gallery.image_paths[0]))
    assert not is_static_file(str(root.parent / "user-sge" / "config.json"))


def app_script_args(bundle: Path, cache: Path) -> list[str]:
    return ["--sge", str(bundle / "user-sge"), "--cge", str(bundle / "user-cge"), "--gallery", str(bundle / "gallery"),
            "--cache-dir", str(cache)]


def test_app_script_serves(tiny_bundle, tmp_path):
    """``python app.py`` itself, the README's command, on the tiny bundle: it serves and answers over REST."""
    import httpx

    from benchmarks.http import rest_call, running_app

    log = tmp_path / "app.log"
    with running_app(app_script_args(tiny_bundle, tmp_path / "cache"), log, timeout=240) as (url, _, _):
        with httpx.Client(timeout=60) as http:
            gallery, status = rest_call(http, url, "search_text", ["a red circle", "Ensemble", 3])
    assert len(gallery) == 3 and "results in" in status
    assert "start-up: imports" in log.read_text()


def test_app_script_turns_the_garbage_collector_back_on(tiny_bundle, tmp_path, monkeypatch):
    """app.py keeps the cyclic GC off during start-up only: afterwards it is on, with start-up's objects frozen."""
    import gc
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["app.py", *app_script_args(tiny_bundle, tmp_path / "cache")])
    try:
        namespace = runpy.run_path(str(Path(__file__).resolve().parents[1] / "app.py"), run_name="app_script")
        assert gc.isenabled() and gc.get_freeze_count() > 0
        assert len(namespace["service"].search_text("a red circle", "SGE", 2).images) == 2
    finally:
        gc.unfreeze()
        gc.enable()
