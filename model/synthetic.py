"""A synthetic captioned-scene world: deterministic from a seed, written in the Karpathy layout.

Each scene holds one to three objects, each with a colour, a shape and a size, laid out left to right
in separate columns (a single object sits on the left, in the middle or on the right), on a lightly
tinted background. Every one of its five captions names every object (size, colour, shape) and their
left-to-right order, so each caption alone identifies the scene: no two images in the whole dataset
share a description, and a perfect model reaches R@1 = 100.

    python -m model.synthetic --out data/scenes --train 20000 --val 1000 --test 1000
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = {"small": 0.45, "large": 0.85}  # fraction of the column width
PLACES = ("on the left", "in the middle", "on the right")
SPLITS = ("train", "val", "test")
COUNT_WORDS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # left to right
    place: int = 1  # column of a single object (0 left, 1 middle, 2 right)

    def key(self) -> tuple:
        """What the captions say, and so what must be unique."""
        return (self.objects, self.place if len(self.objects) == 1 else None)


def random_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2, 2, 3, 3))
    objects = tuple(
        SceneObject(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES))) for _ in range(n)
    )
    return Scene(objects, rng.randrange(3) if n == 1 else 1)


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Five paraphrases, each naming every object and the left-to-right order."""
    objs = [o.phrase() for o in scene.objects]
    if len(objs) == 1:
        where = PLACES[scene.place]
        out = [f"a {objs[0]} {where}", f"{where} there is a {objs[0]}", f"one {objs[0]} {where} of the picture",
               f"a single {objs[0]}, {where}", f"an image with a {objs[0]} {where}"]
    elif len(objs) == 2:
        a, b = objs
        out = [f"a {a} to the left of a {b}", f"a {b} to the right of a {a}",
               f"two shapes: a {a} on the left and a {b} on the right", f"a {a} next to a {b} on its right",
               f"on the left a {a}, on the right a {b}"]
    else:
        a, b, c = objs
        out = [f"a {a}, a {b} and a {c} from left to right", f"three shapes: a {a} on the left, a {b} in the middle "
               f"and a {c} on the right", f"a {b} between a {a} on the left and a {c} on the right",
               f"from right to left: a {c}, a {b} and a {a}", f"a {a} left of a {b}, which is left of a {c}"]
    rng.shuffle(out)
    return out


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    outline = (90, 90, 90)
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill, outline=outline)
    elif shape == "cross":
        t = r / 3
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill, outline=outline)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill, outline=outline)
    elif shape == "star":
        import math

        points = [(cx + (r if i % 2 == 0 else r / 2.3) * math.sin(i * math.pi / 5),
                   cy - (r if i % 2 == 0 else r / 2.3) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(points, fill=fill, outline=outline)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, rng: random.Random, size: int = 96) -> Image.Image:
    """Objects in separate columns (with jitter), so left-to-right order is visible and unambiguous."""
    tint = tuple(rng.randint(150, 205) for _ in range(3))
    image = Image.new("RGB", (size, size), tint)
    draw = ImageDraw.Draw(image)
    n = len(scene.objects)
    columns = [scene.place] if n == 1 else ([0, 2] if n == 2 else [0, 1, 2])
    column_width = size / 3
    for obj, column in zip(scene.objects, columns):
        side = SIZES[obj.size] * column_width
        cx = (column + 0.5) * column_width + rng.uniform(-0.5, 0.5) * (column_width - side) * 0.8
        cy = rng.uniform(side / 2 + 2, size - side / 2 - 2)
        draw_shape(draw, obj.shape, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), COLOURS[obj.colour])
    return image


def generate(out: str | Path, counts: dict[str, int], seed: int = 0, image_size: int = 96) -> Path:
    """Write ``out/images/*.png`` and ``out/dataset.json``; returns the JSON path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set = set()
    entries = []
    for split in SPLITS:
        for index in tqdm(range(counts.get(split, 0)), desc=f"scenes {split}", unit="img", mininterval=2.0):
            scene = random_scene(rng)
            while scene.key() in seen:
                scene = random_scene(rng)
            seen.add(scene.key())
            filename = f"{split}_{index:05d}.png"
            render(scene, rng, image_size).save(out / "images" / filename, optimize=True)
            entries.append({
                "filename": filename, "split": split, "imgid": len(entries),
                "sentences": [{"raw": c} for c in captions(scene, rng)],
            })
    json_path = out / "dataset.json"
    json_path.write_text(json.dumps({"dataset": "synthetic-scenes", "seed": seed, "images": entries}))
    return json_path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=96)
    args = p.parse_args(argv)
    path = generate(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.seed, args.image_size)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
