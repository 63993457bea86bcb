"""First click vs repeated click with SAM vit_b on CPU, against raw SamPredictor in the same run.

    python -m bench.bench_sam [--repeats 2] [--clicks 5] [--threads 2]

vit_b with random (seeded) weights: the work per click does not depend on the weights. Two
levels of "backend click" are timed:
- SAM: `SamSegmenter.masks` on decoded pixels (image hash, cache lookup, encoder on a miss, decoder);
- backend: `InteractivePredictor.predict` on a Label Studio context for a Local Storage JPEG, as
  /predict runs it (read and decode the file, percent -> pixels, SAM, brush RLE region).
Each repetition saves a new JPEG (bus.jpg shifted by a few pixels), so every first click really
runs the encoder. Targets (issue 3): repeated click <= 5% of the first click and <= 1.1x raw
`predict`; first click <= 1.1x raw `set_image` + `predict`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.geometry import mask_to_ls_rle
from backend.images import ImageFetcher
from backend.interactive import InteractivePredictor
from backend.label_config import parse_label_config
from backend.label_studio import AccessTokens
from backend.models.sam import SamModel, SamSegmenter
from backend.models.sam_embeddings import MemoryEmbeddings
from backend.settings import Settings

CONFIG = parse_label_config(
    "<View><Image name=\"image\" value=\"$image\"/>"
    "<KeyPointLabels name=\"kp\" toName=\"image\" smart=\"true\"><Label value=\"bus\"/></KeyPointLabels>"
    "<BrushLabels name=\"brush\" toName=\"image\"><Label value=\"bus\"/></BrushLabels></View>")


def bus_image() -> np.ndarray:
    import ultralytics

    return np.asarray(Image.open(Path(ultralytics.__file__).parent / "assets" / "bus.jpg").convert("RGB"))


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def click_context(x_percent: float, y_percent: float) -> dict:
    return {"result": [{"type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
                        "value": {"x": x_percent, "y": y_percent, "width": 0.5, "keypointlabels": ["bus"]}}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="fresh images per side (each costs encoder runs)")
    parser.add_argument("--clicks", type=int, default=5, help="repeated clicks timed per image")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    network = sam_model_registry["vit_b"]().eval()
    segmenter = SamSegmenter(SamModel(network, "cpu", "vit_b (random weights)"), MemoryEmbeddings(16), None)
    raw = SamPredictor(network)
    base = bus_image()
    height, width = base.shape[:2]
    x_percents = [20 + 60 * k / max(1, args.clicks - 1) for k in range(args.clicks)]
    points = [np.array([[x * width / 100, 0.6 * height]]) for x in x_percents]
    positive = np.array([1])
    timings: dict[str, list[float]] = {name: [] for name in
                                       ("sam first", "sam repeated", "backend first", "backend repeated",
                                        "raw first", "raw repeated")}

    with tempfile.TemporaryDirectory(prefix="bench-sam-") as root:
        settings = Settings.load({"local_files_document_root": root, "cache_dir": root}, environ={})
        fetcher = ImageFetcher(Path(root) / "cache", root, 30.0, settings.max_image_pixels, AccessTokens(30.0),
                               settings.max_download_bytes)
        backend = InteractivePredictor(segmenter, settings, fetcher, "bench")

        def backend_click(name: str, x_percent: float) -> None:
            tasks = [{"id": 1, "data": {"image": f"/data/local-files/?d={name}"}}]
            (answer,) = backend.predict(tasks, CONFIG, click_context(x_percent, 60.0), None, "bench")
            assert answer["result"], "the click found no mask"

        def shifted(shift: int) -> np.ndarray:
            return np.ascontiguousarray(np.roll(base, shift, axis=1))

        segmenter.masks(shifted(1), points[0], positive, None, multimask=True)  # warm-up: allocator, kernels
        for repeat in range(1, args.repeats + 1):
            pixels = shifted(3 * repeat)
            name = f"bus_{repeat}.jpg"
            Image.fromarray(shifted(3 * repeat + 1)).save(Path(root) / name, quality=95)
            raw_pixels = shifted(3 * repeat + 2)
            timings["sam first"].append(seconds(lambda: segmenter.masks(pixels, points[0], positive, None, True)))
            timings["backend first"].append(seconds(lambda: backend_click(name, x_percents[0])))
            timings["raw first"].append(seconds(lambda: (raw.set_image(raw_pixels),
                                                         raw.predict(points[0], positive, multimask_output=True))))
            # Repeated clicks alternate between the three sides, so machine noise hits them alike.
            for point, x_percent in zip(points, x_percents):
                timings["sam repeated"].append(seconds(lambda: segmenter.masks(pixels, point, positive, None, True)))
                timings["backend repeated"].append(seconds(lambda: backend_click(name, x_percent)))
                timings["raw repeated"].append(seconds(lambda: raw.predict(point, positive, multimask_output=True)))

    median = {name: statistics.median(values) for name, values in timings.items()}
    print(f"SAM vit_b (random weights) on CPU, {args.threads} threads, {width}x{height} image, "
          f"{args.repeats} images x {args.clicks} repeated clicks; medians:")
    print(f"  raw SamPredictor   set_image+predict {median['raw first']:7.2f} s    "
          f"predict {median['raw repeated'] * 1e3:7.1f} ms")
    for level in ("sam", "backend"):
        first, repeated = median[f"{level} first"], median[f"{level} repeated"]
        print(f"  {level:8} click     first {first:7.2f} s    repeated {repeated * 1e3:7.1f} ms   "
              f"repeated/first {repeated / first:6.2%} (<= 5%)   repeated/raw predict "
              f"{repeated / median['raw repeated']:5.2f}x (<= 1.1x)   first/raw set_image+predict "
              f"{first / median['raw first']:5.2f}x (<= 1.1x)")
    print(f"  encoder runs: {segmenter.encoder_calls} (1 warm-up + 2 per image: SAM level and backend level)")
    # Random weights answer with speckled masks, whose brush RLE is far longer than a real object's.
    masks, scores = segmenter.masks(pixels, points[0], positive, None, multimask=True)
    mask = masks[int(np.argmax(scores))]
    runs = int(np.count_nonzero(mask.ravel()[1:] != mask.ravel()[:-1]))
    smooth = np.zeros_like(mask)
    smooth[height // 4:3 * height // 4, width // 4:3 * width // 4] = True
    print(f"  of the backend's extra time, brush RLE: {seconds(lambda: mask_to_ls_rle(mask)) * 1e3:.1f} ms for this "
          f"mask ({runs} runs), {seconds(lambda: mask_to_ls_rle(smooth)) * 1e3:.1f} ms for one solid object")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
