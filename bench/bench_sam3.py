"""SAM 3 on this machine: image encoding, one phrase, N phrases on one image, first vs repeated click.

    python bench/bench_sam3.py                 # the reduced random-weight SAM 3 of the tests (224 px)
    python bench/bench_sam3.py --full          # Meta's full-size architecture, random weights (3.4 GB, slow on CPU)
    python bench/bench_sam3.py --checkpoint models/sam3.pt

N phrases are timed side by side: the backend (one image encoding, then each phrase) against calling
Meta's Sam3Processor the way a per-label loop would (set_image + set_text_prompt for every phrase).
Clicks go through SamSegmenter (MODEL_NAME=sam3): the first encodes the image, the second reuses it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.sam import SamSegmenter  # noqa: E402
from backend.models.sam3 import load_sam3  # noqa: E402
from backend.models.sam3_network import Sam3Architecture, running, save_reduced_checkpoint  # noqa: E402
from backend.models.sam_embeddings import MemoryEmbeddings  # noqa: E402

REDUCED = Sam3Architecture(resolution=224, vit_width=32, vit_depth=2, vit_heads=2, vit_window=8, vit_global_blocks=(1,),
                           text_width=32, text_heads=2, text_layers=1, encoder_layers=1, decoder_layers=1,
                           feedforward=128)  # tests/sam3_reduced.py's
PHRASES = ["scratch", "dent", "pallet", "wooden crate", "forklift", "person", "cardboard box", "label"]


def timed(call, repeat: int) -> tuple[float, object]:  # noqa: ANN001
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a SAM 3 checkpoint (default: a random-weight one)")
    parser.add_argument("--full", action="store_true", help="random weights at Meta's full size")
    parser.add_argument("--phrases", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="640x480", help="picture WIDTHxHEIGHT")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or save_reduced_checkpoint(
            Path(scratch) / "sam3-bench.pt", Sam3Architecture() if args.full else REDUCED)
        start = time.perf_counter()
        model = load_sam3(checkpoint, args.device)
        load_seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.network.parameters()) / 1e6
    print(f"SAM 3 {model.name} on {args.device} ({torch.get_num_threads()} threads), {parameters:.1f} M parameters, "
          f"loaded in {load_seconds:.1f} s; picture {width}x{height}; median of {args.repeat}")
    model.find(model.embed(pixels), "warm up", 0.5)
    encode, embedding = timed(lambda: model.embed(pixels), args.repeat)
    print(f"image encoding:               {encode * 1000:8.0f} ms")
    one, _ = timed(lambda: model.find(embedding, "scratch", 0.5), args.repeat)
    print(f"one phrase (encoded image):   {one * 1000:8.0f} ms")
    phrases = (PHRASES * (args.phrases // len(PHRASES) + 1))[:args.phrases]
    backend, _ = timed(lambda: [model.find(model.embed(pixels), p, 0.5) for p in phrases[:1]]
                       + [model.find(embedding, p, 0.5) for p in phrases[1:]], args.repeat)
    processor = model.processor
    processor.confidence_threshold = 0.5

    def meta_loop() -> None:
        from PIL import Image

        with running(model.device):
            for phrase in phrases:
                processor.set_text_prompt(phrase, processor.set_image(Image.fromarray(pixels)))

    meta, _ = timed(meta_loop, args.repeat)
    print(f"{args.phrases} phrases, backend (1 encoding): {backend * 1000:8.0f} ms")
    print(f"{args.phrases} phrases, Sam3Processor per phrase: {meta * 1000:8.0f} ms  (backend {meta / backend:.2f}x faster)")
    segmenter = SamSegmenter(model, MemoryEmbeddings(4), None)
    click = (np.array([[width * 0.4, height * 0.5]]), np.array([1]))
    start = time.perf_counter()
    segmenter.best_mask(pixels, *click, None, multimask=True)
    first = time.perf_counter() - start
    repeated, _ = timed(lambda: segmenter.best_mask(pixels, *click, None, multimask=True), args.repeat)
    print(f"click, first (encodes):       {first * 1000:8.0f} ms")
    print(f"click, repeated (cached):     {repeated * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
