"""The app through gradio_client against a launched server (loopback): every endpoint, and bad input."""

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
    assert len(sge) == len(cge) == 4 and "Agreement" in summary
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
