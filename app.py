"""USER image-text retrieval demo: ``python app.py`` (embedded default) or ``python app.py --help``.

Environment variables (for Hugging Face Spaces) name the same things as the flags:
USER_SGE_CHECKPOINT, USER_CGE_CHECKPOINT, USER_GALLERY, USER_CACHE_DIR; GRADIO_SERVER_NAME/PORT are
honoured by Gradio itself.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
# Start-up creates about a million objects that live as long as the app (modules, models, interface), and the
# cyclic collector would scan them again and again as they appear (~1.2 s of a 10 s warm start): it stays off
# until they exist, and they are then frozen out of every later collection (shorter GC pauses while serving).
gc.disable()

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from app.gallery import load_gallery  # noqa: E402
from app.service import load_service  # noqa: E402
from app.ui import CSS, build_demo  # noqa: E402

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"

try:  # ZeroGPU on Spaces; a no-op everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:
    gpu = None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sge", default=os.environ.get("USER_SGE_CHECKPOINT", str(ASSETS / "user-sge")),
                   help="SGE checkpoint: Hub id or folder ('' for none)")
    p.add_argument("--cge", default=os.environ.get("USER_CGE_CHECKPOINT", str(ASSETS / "user-cge")),
                   help="CGE checkpoint: Hub id or folder ('' for none)")
    p.add_argument("--gallery", default=os.environ.get("USER_GALLERY", str(ASSETS / "gallery")),
                   help="gallery folder: dataset.json / captions.jsonl / images / SCAN features")
    p.add_argument("--gallery-split", default=None, help="only this split of a Karpathy dataset.json")
    p.add_argument("--cache-dir", default=os.environ.get("USER_CACHE_DIR", str(Path.home() / ".cache" / "user-demo")))
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    args, _ = p.parse_known_args(argv)
    return args


def create_demo(args: argparse.Namespace):
    imported = time.perf_counter()
    gallery = load_gallery(args.gallery, args.gallery_split)
    service = load_service(args.sge or None, args.cge or None, gallery, Path(args.cache_dir), args.device)
    loaded = time.perf_counter()
    demo = build_demo(service, gpu=gpu)
    print(f"start-up: imports {imported - STARTED:.1f} s, models + gallery {loaded - imported:.1f} s, "
          f"interface {time.perf_counter() - loaded:.1f} s", file=sys.stderr, flush=True)
    return service, demo


ARGS = parse_args()
service, demo = create_demo(ARGS)
gc.freeze()
gc.enable()

if __name__ == "__main__":
    allowed = [str(Path(ARGS.gallery).resolve())]
    # Every API call is a new Gradio session holding a copy of the page's component configs (~0.3 MB here):
    # keep the newest 128 rather than Gradio's default 10,000, so memory stays flat under API traffic.
    demo.queue(default_concurrency_limit=4, max_size=64).launch(
        share=ARGS.share, allowed_paths=allowed, max_file_size="20mb", css=CSS, state_session_capacity=128,
        prevent_thread_lock=True,
    )
    # Serving already; the first query's one-off costs (first forwards, loading the CLIP) are paid here, not by a user.
    print(f"warm-up: {service.warm_up():.1f} s", file=sys.stderr, flush=True)
    demo.block_thread()
