import hashlib
import json
import random

from PIL import Image

from model.data import read_karpathy
from model.synthetic import Scene, SceneObject, captions, generate, render

COUNTS = {"train": 60, "val": 15, "test": 15}


def digest(folder):
    h = hashlib.sha1()
    for path in sorted((folder / "images").iterdir()):
        h.update(path.read_bytes())
    h.update((folder / "dataset.json").read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_in_karpathy_layout(tmp_path):
    generate(tmp_path / "a", COUNTS, seed=3, image_size=48)
    generate(tmp_path / "b", COUNTS, seed=3, image_size=48)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    generate(tmp_path / "c", COUNTS, seed=4, image_size=48)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    for split, n in COUNTS.items():
        entries, caps = read_karpathy(tmp_path / "a" / "dataset.json", split)
        assert len(entries) == n and len(caps) == 5 * n
        image = Image.open(tmp_path / "a" / "images" / entries[0]["filename"])
        assert image.size == (48, 48) and image.mode == "RGB"


def test_every_caption_identifies_its_scene(tmp_path):
    generate(tmp_path, COUNTS, seed=0, image_size=48)
    data = json.loads((tmp_path / "dataset.json").read_text())
    owner = {}
    for entry in data["images"]:
        texts = [s["raw"] for s in entry["sentences"]]
        assert len(set(texts)) == 5
        for text in texts:
            assert owner.setdefault(text, entry["filename"]) == entry["filename"], f"{text!r} is ambiguous"


def test_captions_name_every_object_and_the_order():
    scene = Scene((SceneObject("red", "circle", "large"), SceneObject("blue", "star", "small")))
    for text in captions(scene, random.Random(0)):
        assert "large red circle" in text and "small blue star" in text
    # order matters: the mirrored scene never shares a caption
    mirrored = Scene(scene.objects[::-1])
    assert not set(captions(scene, random.Random(0))) & set(captions(mirrored, random.Random(0)))


def test_render_puts_objects_left_to_right():
    scene = Scene((SceneObject("red", "square", "large"), SceneObject("blue", "square", "large")))
    image = render(scene, random.Random(0), size=96).convert("RGB")
    pixels = image.load()
    reds = [x for x in range(96) for y in range(96) if pixels[x, y] == (220, 40, 40)]
    blues = [x for x in range(96) for y in range(96) if pixels[x, y] == (40, 80, 220)]
    assert reds and blues and max(reds) < min(blues)
