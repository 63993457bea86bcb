"""Interactive segmentation: the annotator's smart clicks and box become one SAM call, and its mask
becomes the regions the labeling config can show (brush, polygons, box), labeled like the prompt.

A single click is ambiguous, so it asks SAM for its three candidate masks and keeps the one with
the best predicted IoU, as Meta's SamPredictor documentation recommends; several clicks or a box
ask for one mask (`multimask_output=False`). (HumanSignal's and OpenMMLab's SAM backends always
ask for one mask, which for a single click is SAM's least reliable output.)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from backend.sources.images import ImageError, ImageFetcher, TaskImage
from formats.label_config import LabelConfig
from backend.sources.label_studio import Credentials
from backend.models.cache import ModelCache
from backend.models.sam import SamSegmenter, checkpoint_fingerprint, load_sam
from backend.models.sam_checkpoints import resolve_checkpoint
from backend.models.sam_embeddings import DiskEmbeddings, MemoryEmbeddings, image_key
from backend.interactive.concepts import ConceptPrompt, concept_regions, read_concept_prompt, threshold_for
from backend.interactive.prompts import PromptRegions, SamPrompt, read_prompt
from formats.regions import mask_regions, prediction
from backend.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

EMBEDDING_FORMAT = "v1"  # part of the disk cache's directory name; change it when the stored layout changes


def output_tags(settings: Settings) -> tuple[str, ...]:
    wanted = (("BrushLabels", settings.out_mask), ("PolygonLabels", settings.out_poly),
              ("RectangleLabels", settings.out_bbox))
    return tuple(tag for tag, enabled in wanted if enabled)


def answer_regions(config: LabelConfig, tags: tuple[str, ...], to_name: str, label: str, mask: np.ndarray,
                   score: float, polygon_tolerance: float) -> list[dict]:
    """The mask as every enabled control of the prompted image shows it, under that control's spelling of the label."""
    regions: list[dict] = []
    for tag in tags:
        for control in config.controls_for_image(to_name, tag):
            if control.skip:
                continue
            control_label = control.label_for(label)
            if control_label is None:
                logger.warning("<%s name=%r> has no label %r; its region is left out", tag, control.name, label)
                continue
            regions.extend(mask_regions(control, control_label, mask, score, polygon_tolerance))
    return regions


def segment(segmenter: SamSegmenter, pixels: np.ndarray, prompt: SamPrompt,
            key: str | None = None) -> tuple[np.ndarray, float]:
    """SAM's mask for the prompt, (H, W) bool, and its predicted IoU."""
    clicks = len(prompt.points) > 0
    return segmenter.best_mask(pixels, prompt.points if clicks else None, prompt.point_labels if clicks else None,
                               prompt.box, multimask=prompt.is_single_click, key=key)


class RecentImages:
    """The last few decoded task images, by file identity: repeated clicks on an image skip decoding
    and hashing it (together about 15 ms for a 1 MP JPEG, a fifth of a vit_b click on CPU)."""

    def __init__(self, fetcher: ImageFetcher, capacity: int = 2) -> None:
        self._fetcher = fetcher
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, int, int], tuple[TaskImage, str]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, url: str, task_id: int | None, credentials: Credentials | None) -> tuple[TaskImage, str]:
        """The image and its image_key; raises ImageError like ImageFetcher.load."""
        path = self._fetcher.fetch(url, task_id, credentials)
        try:
            stat = path.stat()
        except OSError as exc:
            raise ImageError(f"cannot read '{url[:200]}': {exc}") from None
        identity = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            found = self._items.get(identity)
            if found is not None:
                self._items.move_to_end(identity)
                return found
        pixels = self._fetcher.decode(path)
        found = (TaskImage(url=url, pixels=pixels), image_key(pixels))
        with self._lock:
            self._items[identity] = found
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return found


class InteractivePredictor:
    def __init__(self, segmenter: SamSegmenter, settings: Settings, fetcher: ImageFetcher, description: str,
                 checkpoint: Path | None = None) -> None:
        self.segmenter = segmenter
        self.checkpoint = checkpoint  # names the SAM model in model versions
        self._settings = settings
        self._images = RecentImages(fetcher)
        self._tags = output_tags(settings)
        self._description = description
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-prefetch")
        # Prefetching more images than the caches keep would evict the ones fetched first.
        self._prefetch_slots = threading.BoundedSemaphore(max(1, settings.sam_cache_size))

    def describe(self) -> str:
        return self._description

    def predict(self, tasks: list, config: LabelConfig, context: dict, credentials: Credentials | None,
                model_version: str) -> list[dict]:
        concept = read_concept_prompt(context.get("result") or [], config) if self.finds_all else None
        if concept is not None:  # SAM 3: every instance of a typed phrase or a find-all box
            return [prediction(self._concept_regions(task, concept, config, credentials) if self._tags else [],
                               model_version) for task in tasks]
        prompt = read_prompt(context.get("result") or [], config)
        if prompt is None:
            logger.warning("interactive request without a usable smart keypoint or rectangle; answering nothing")
        elif not self._tags:
            logger.warning("interactive request answered with nothing: OUT_MASK, OUT_POLY and OUT_BBOX are all off")
        return [prediction(self._task_regions(task, prompt, config, credentials) if prompt and self._tags else [],
                           model_version) for task in tasks]

    def _image(self, task: object, data_key: str, credentials: Credentials | None) -> tuple[TaskImage, str] | None:
        """The task's image and its image_key; None (and a warning) when it cannot be had."""
        task_id = task.get("id") if isinstance(task, dict) else None
        url = (task.get("data") or {}).get(data_key) if isinstance(task, dict) else None
        try:
            if not isinstance(url, str):
                raise ImageError(f"task data has no '{data_key}' image URL")
            return self._images.load(url, task_id, credentials)
        except (ImageError, PermissionError) as exc:
            logger.warning("task %s: %s", task_id, exc)
            return None

    def _task_regions(self, task: object, prompt: PromptRegions, config: LabelConfig,
                      credentials: Credentials | None) -> list[dict]:
        task_id = task.get("id") if isinstance(task, dict) else None
        loaded = self._image(task, prompt.data_key, credentials)
        if loaded is None:
            return []
        image, key = loaded
        sam_prompt = prompt.in_pixels(image.width, image.height)
        if sam_prompt is None:
            return []
        mask, score = segment(self.segmenter, image.pixels, sam_prompt, key)
        regions = answer_regions(config, self._tags, prompt.to_name, sam_prompt.label, mask, score,
                                 self._settings.polygon_tolerance)
        if not regions:
            logger.info("task %s: SAM found no object at the prompt, or the config has no %s for image %r",
                        task_id, "/".join(self._tags), prompt.to_name)
        return regions

    @property
    def finds_all(self) -> bool:
        """Whether the model finds every instance of a concept (SAM 3), not one object per prompt."""
        return hasattr(self.segmenter.model, "find_examples")

    def _concept_regions(self, task: object, concept: ConceptPrompt, config: LabelConfig,
                         credentials: Credentials | None) -> list[dict]:
        loaded = self._image(task, concept.data_key, credentials)
        if loaded is None:
            return []
        image, key = loaded
        model, embedding = self.segmenter.model, self.segmenter.embedding(image.pixels, key)
        threshold = threshold_for(config, concept, self._settings.model_score_threshold)
        boxes, positive = concept.boxes(image.width, image.height)
        if len(boxes):
            found = model.find_examples(embedding, boxes, positive, threshold, phrase=concept.phrase)
        elif concept.phrase:
            found = model.find(embedding, concept.phrase, threshold)
        else:
            return []
        return concept_regions(config, self._tags, concept, found, self._settings.polygon_tolerance)

    def masks_for_boxes(self, image: TaskImage, boxes: np.ndarray) -> np.ndarray:
        """(N, H, W) bool, one mask per xyxy pixel box (YOLO + SAM)."""
        return self.segmenter.masks_for_boxes(image.pixels, np.asarray(boxes, dtype=np.float64).reshape(-1, 4))

    def prefetch(self, image: TaskImage) -> Future | None:
        """Compute the image's embedding in the background, so the first click on it is fast too."""
        if not self._prefetch_slots.acquire(blocking=False):
            logger.debug("prefetch queue full; %s is embedded on its first click", image.url[:200])
            return None
        future = self._prefetcher.submit(self.segmenter.embedding, image.pixels)
        future.add_done_callback(self._prefetched)
        return future

    def _prefetched(self, future: Future) -> None:
        self._prefetch_slots.release()
        if future.exception() is not None:
            logger.warning("SAM embedding prefetch failed: %s", future.exception())


def _disk_cache(settings: Settings, checkpoint: Path) -> DiskEmbeddings | None:
    if not settings.sam_disk_cache_dir:
        return None
    fingerprint = f"{EMBEDDING_FORMAT}-{settings.model_name}-{settings.sam_config}-{checkpoint_fingerprint(checkpoint)}"
    try:
        return DiskEmbeddings(Path(settings.sam_disk_cache_dir).expanduser(), fingerprint,
                              max_bytes=int(settings.sam_disk_cache_max_gb * 1e9))
    except OSError as exc:
        raise SettingsError(f"SAM_DISK_CACHE_DIR (sam_disk_cache_dir)='{settings.sam_disk_cache_dir}' cannot be "
                            f"used: {exc}") from None


def build_interactive(settings: Settings, cache: ModelCache, device: str, fetcher: ImageFetcher,
                      on_embedding_lookup: Callable[[str], None]) -> InteractivePredictor:
    """Load the configured SAM (once per process); raises SamLoadError / SettingsError naming the setting.
    `on_embedding_lookup` is told each embedding cache lookup's result (the serving metrics count them)."""
    checkpoint = resolve_checkpoint(settings.sam_checkpoint_file, settings.model_root_path, settings.model_name,
                                    settings.sam_config, device)

    def load() -> SamSegmenter:
        return SamSegmenter(load_sam(settings.model_name, settings.sam_config, checkpoint, device),
                            MemoryEmbeddings(settings.sam_cache_size), _disk_cache(settings, checkpoint),
                            on_lookup=on_embedding_lookup)

    segmenter = cache.get(("sam", str(checkpoint), settings.model_name, settings.sam_config, device), load)
    description = (f"SAM {segmenter.model.name.rsplit(':', 1)[0]} from {checkpoint} on {device} "
                   f"(embeddings: {settings.sam_cache_size} in memory, disk cache "
                   f"{settings.sam_disk_cache_dir or 'off'}; answers: {', '.join(output_tags(settings)) or 'none'})")
    return InteractivePredictor(segmenter, settings, fetcher, description, checkpoint)
