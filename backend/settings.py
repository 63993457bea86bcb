"""All configuration in one place.

Every setting has an environment variable (upper case) and a `--with key=value` key (the same name
in lower case); `--with` wins over the environment. `python -m backend.settings` prints the table
of docs/configuration.md, so documentation and code cannot drift apart (tests/test_docs.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
MAX_CLUSTERS = 64  # CLUSTERS: more would split a project's images too thin for the queue to mean anything


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _setting(default: Any, help: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help}, repr=not secret)  # secrets stay out of repr() and logs


# A secret's value may come from a file instead (Docker secrets): the setting named here holds its path.
SECRET_FILES = {"basic_auth_pass": "basic_auth_pass_file", "label_studio_api_key": "label_studio_api_key_file"}


@dataclass(frozen=True)
class Settings:
    # Models
    model_root: str = _setting("./models", "Directory that `model_path` values (label config, settings) are relative to.")
    yolo_det_model: str = _setting("yolov8n.pt", "YOLO model for RectangleLabels without `model_path` (Ultralytics downloads known names when online).")
    yolo_seg_model: str = _setting("yolov8n-seg.pt", "YOLO segmentation model for PolygonLabels/BrushLabels without `model_path`.")
    yolo_pose_model: str = _setting("yolov8n-pose.pt", "YOLO pose model for (not smart) KeyPointLabels without `model_path`.")
    yolo_obb_model: str = _setting("yolov8n-obb.pt", "YOLO OBB model for RectangleLabels with `model_obb=\"true\"` without `model_path`.")
    yolo_cls_model: str = _setting("yolov8n-cls.pt", "YOLO classification model for Choices without `model_path`.")
    video_time_limit: float = _setting(80.0, "Seconds of tracking per video in a /predict, YOLO or SAM 2 (below Label Studio's ML_TIMEOUT_PREDICT, 100 s); a longer video gets the tracks of the frames reached, and a warning.")
    model_score_threshold: float = _setting(0.5, "Default minimum score of a predicted region (per control: `model_score_threshold`).")
    yolo_imgsz: int = _setting(0, "Inference size; 0 uses the size each model was trained at. A project's trained model always predicts at its TRAIN_IMGSZ.")
    yolo_sam: bool = _setting(False, "Batch predictions: use YOLO boxes as SAM box prompts for masks (needs a SAM model).")
    polygon_tolerance: float = _setting(0.5, "Polygon simplification distance in pixels (also at least 0.1% of the outline length).")
    batch_size: int = _setting(8, "Images per YOLO forward pass in a multi-task /predict.")
    predict_time_limit: float = _setting(90.0, "Seconds a /predict may take, below Label Studio's ML_TIMEOUT_PREDICT (100 s): tasks not reached by then (or after the client disconnected) get no prediction, which Label Studio asks for again later; one warning says how many.")
    max_decoded_pixels: int = _setting(100_000_000, "Decoded image pixels one /predict holds at once (about 3 bytes each, plus Pillow's decoding buffer for the images being decoded): its tasks are decoded and predicted in groups under it; an image larger than it alone is predicted on its own.")
    device: str = _setting("auto", "`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.")
    half: bool = _setting(False, "Half precision on CUDA.")
    model_version: str = _setting("", "Version string reported to Label Studio for every config; empty names the model files each config uses (`file@hash`).")
    task_score: str = _setting("quality", "Each prediction's task `score` (Label Studio's uncertainty sampling serves the lowest first): `quality`, an estimate in [0, 1] of how little the prediction needs correcting (see Active learning); `mean`, the mean of its region scores (HumanSignal's).")
    clusters: int = _setting(0, "Give each prediction a `cluster` (0..K-1) from K clusters of the project's images by the YOLO backbone's features, so uncertainty sampling spreads annotators across kinds of images; the centres are made once per project (MODEL_ROOT/projects/<uid>/) from the first /predict of at least 3K images of a project Label Studio connected here (see Active learning). 0: no clusters; at most 64.")
    concept_model: str = _setting("", "SAM 3 checkpoint in MODEL_ROOT (Meta's `sam3.pt`, `pip install -e '.[sam3]'`) that answers every RectangleLabels/PolygonLabels/BrushLabels label no class of the control's YOLO model serves, prompted with the label's `predicted_values` or its value; empty: those labels get nothing.")
    # SAM (keys of OpenMMLab label_anything's command line)
    model_name: str = _setting("", "`sam`, `sam2` (or `sam2.1`), `mobile_sam`, `sam_hq` or `sam3` (SAM 3's instance interactivity, SAM_CHECKPOINT_FILE=sam3.pt) to enable interactive segmentation; empty disables it.")
    sam_config: str = _setting("", "SAM size: `vit_b`, `vit_l`, `vit_h`, `vit_t` (MobileSAM), `vit_tiny` (light SAM-HQ), `demo` (tiny demo SAM), SAM 2's `hiera_t`, `hiera_s`, `hiera_b+`, `hiera_l` (or Meta's names: `sam2.1_hiera_t`); empty reads it from the checkpoint.")
    sam_checkpoint_file: str = _setting("", "SAM checkpoint path (absolute, or relative to the working directory, then to MODEL_ROOT); empty with `sam2`: `sam2.1_hiera_tiny.pt` on CPU, `sam2.1_hiera_large.pt` on CUDA (or Ultralytics' `sam2.1_t.pt` / `sam2.1_l.pt`) in MODEL_ROOT.")
    out_mask: bool = _setting(True, "Interactive answers include BrushLabels masks.")
    out_bbox: bool = _setting(False, "Interactive answers include the mask's RectangleLabels box.")
    out_poly: bool = _setting(False, "Interactive answers include PolygonLabels outlines.")
    sam_cache_size: int = _setting(16, "Image embeddings kept in memory (LRU).")
    sam_disk_cache_dir: str = _setting("", "Directory for fp16 embeddings that survive restarts and are shared by workers; empty disables.")
    sam_disk_cache_max_gb: float = _setting(10.0, "Size limit of SAM_DISK_CACHE_DIR in GB (10^9 bytes); the least recently used embeddings go first. 0: no limit.")
    sam2_track_frames: int = _setting(72, "Frames after a VideoRectangle prompt that SAM 2 tracks the object through (72: 3 s at 24 fps; VIDEO_TIME_LIMIT also applies).")
    sam2_video_cache_frames: int = _setting(96, "Video frames whose SAM 2 image features stay in memory (LRU, about 17 MB each), so prompts on frames already tracked do not encode them again; 0 disables.")
    sam_prefetch: bool = _setting(False, "Compute SAM embeddings in the background when tasks are predicted, so the first click is fast.")
    # Label Studio and task data
    label_studio_url: str = _setting("", "Label Studio URL: where the backend reads `/data/upload/...` images and trains from, for every project; when set, the `hostname` sent in /setup is not used. Empty: each project's /setup `hostname` (trusted only from an authenticated or loopback caller).")
    label_studio_api_key: str = _setting("", "Label Studio API key (legacy token or personal access token), sent only to LABEL_STUDIO_URL (setting it without LABEL_STUDIO_URL is a start-up error); empty uses the token sent in /setup.", secret=True)
    label_studio_api_key_file: str = _setting("", "File holding LABEL_STUDIO_API_KEY (a Docker secret); set one or the other.")
    local_files_document_root: str = _setting("", "Root for `/data/local-files/?d=...` images; files outside it are refused. Empty downloads them from Label Studio.")
    cache_dir: str = _setting("~/.cache/ls-yolo-sam", "Downloaded images and the state /setup shares between workers.")
    image_cache_max_gb: float = _setting(10.0, "Size limit of CACHE_DIR/images (downloaded images and videos) in GB (10^9 bytes); the least recently used go first. 0: no limit.")
    download_timeout: float = _setting(30.0, "Seconds an image download may take in all (not per read); PREDICT_TIME_LIMIT also ends it.")
    fetch_workers: int = _setting(8, "Images fetched concurrently in a multi-task /predict.")
    max_image_pixels: int = _setting(100_000_000, "Images with more pixels are refused (decompression bombs).")
    max_download_bytes: int = _setting(100_000_000, "Image downloads larger than this are abandoned (bytes, after gzip decoding).")
    max_request_bytes: int = _setting(20_000_000, "Request bodies larger than this get 413.")
    max_label_config_bytes: int = _setting(1_000_000, "A /setup `schema` (labeling config) larger than this gets 413, as do a `hostname` over 2,048 and an `access_token` over 8,192 bytes.")
    max_setup_projects: int = _setting(1000, "Projects whose /setup (URL, token, labeling config) is kept in CACHE_DIR/setup; beyond it, or beyond 50 MB together, the least recently set up are forgotten until Label Studio sends /setup again.")
    allow_private_urls: bool = _setting(False, "Let task image URLs reach loopback, private, link-local and reserved addresses (Label Studio's own host always may; cloud metadata addresses only through ALLOWED_URL_HOSTS).")
    allowed_url_hosts: str = _setting("", "Hosts task image URLs may reach even on private addresses: names, `*.domain`, addresses or CIDRs, comma-separated (on-premise storage).")
    storage_read: str = _setting("presign", "Cloud storage image URLs (`s3://`, `gs://`, `azure-blob://`): `presign` asks Label Studio to presign each; `direct` reads the bucket through fsspec with this process' own credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*; `pip install -e '.[remote]'`).")
    storage_options: str = _setting("", "JSON object of fsspec options for direct cloud storage reads, e.g. `{\"endpoint_url\": \"http://minio:9000\"}` for an S3-compatible store.")
    # Server
    basic_auth_user: str = _setting("", "Basic auth user; with BASIC_AUTH_PASS, every endpoint requires it (/health too). Neither set: protected mode, only loopback callers are answered (see docs/security.md).")
    basic_auth_pass: str = _setting("", "Basic auth password (`--basic-auth-pass` works too, but other users see it in `ps`).", secret=True)
    basic_auth_pass_file: str = _setting("", "File holding BASIC_AUTH_PASS (a Docker secret); set one or the other.")
    allow_unauthenticated: bool = _setting(False, "Without basic auth, answer callers on other machines too (protected mode answers loopback only): anyone who reaches the port may then predict, train and connect the backend to their own Label Studio.")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR.")
    workers: int = _setting(1, "gunicorn worker processes (`backend/gunicorn.conf.py`).")
    threads: int = _setting(4, "Threads per worker for blocking model calls.")
    # Training on the project's annotations (Label Studio's "Start Training")
    train_every: int = _setting(0, "Also train after every N annotations created/updated/deleted (Label Studio webhook events); 0: only on Start Training.")
    train_min_images: int = _setting(10, "Fewest annotated images a training job accepts; fewer is a logged refusal.")
    train_device: str = _setting("", "Device for training: `cpu`, `cuda` or `cuda:N`; empty: the serving device (DEVICE).")
    train_epochs: int = _setting(50, "Epochs per training job (on CPU: 5-20 with a small TRAIN_IMGSZ).")
    train_imgsz: int = _setting(640, "Training and validation image size (on CPU: 160-320).")
    train_batch: int = _setting(16, "Training batch size (on CPU: 4-8).")
    train_final_on_all: bool = _setting(True, "When the new model is promoted (judged on the val split), train the served model again on every annotated picture with the same epochs (better on small projects; twice the training time).")
    train_threads: int = _setting(0, "CPU threads of the training process; 0: half the CPU cores. It also runs at a lower priority (nice).")
    train_concurrency: int = _setting(1, "Training processes at once per MODEL_ROOT, whichever worker or host got the trigger (file locks in MODEL_ROOT/.training); other jobs wait their turn.")
    train_queue_length: int = _setting(20, "Training jobs that may wait for a free TRAIN_CONCURRENCY slot (first come, first served); a trigger beyond is refused with a message (webhook answer 503).")
    train_keep_versions: int = _setting(5, "Trained model files kept per project: beyond, the oldest go with their run folders (rejected candidates first; the served version always stays; cards stay).")
    train_queue: str = _setting("", "`redis://host:6379/0`: training jobs go to this RQ queue for `rq worker ls-yolo-train` (sharing MODEL_ROOT); empty: a local process.")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Environment first, then `--with` overrides; raises SettingsError on unknown keys or bad values."""
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name.upper() in environ:
                values[name] = _coerce(name, f.type, environ[name.upper()])
        for key, raw in (overrides or {}).items():
            name = key.lower()
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise SettingsError(f"unknown setting '{key}'. Known settings: {known}")
            values[name] = _coerce(name, fields[name].type, raw)
        for secret, file_setting in SECRET_FILES.items():
            if values.get(file_setting):
                if values.get(secret):
                    raise SettingsError(f"set {secret.upper()} or {file_setting.upper()}, not both")
                values[secret] = _read_secret(file_setting, values[file_setting])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0.0 <= self.model_score_threshold <= 1.0:
            raise SettingsError("MODEL_SCORE_THRESHOLD must be between 0 and 1")
        for name in ("batch_size", "fetch_workers", "max_image_pixels", "max_download_bytes", "max_request_bytes", "workers",
                     "threads", "max_decoded_pixels", "max_label_config_bytes", "max_setup_projects"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} must be at least 1")
        if self.video_time_limit <= 0 or self.predict_time_limit <= 0:
            raise SettingsError("VIDEO_TIME_LIMIT and PREDICT_TIME_LIMIT must be positive numbers of seconds")
        if self.sam2_track_frames < 1 or self.sam2_video_cache_frames < 0:
            raise SettingsError("SAM2_TRACK_FRAMES must be at least 1 and SAM2_VIDEO_CACHE_FRAMES not negative")
        if self.sam_cache_size < 0 or self.download_timeout <= 0 or self.polygon_tolerance < 0:
            raise SettingsError("SAM_CACHE_SIZE, DOWNLOAD_TIMEOUT and POLYGON_TOLERANCE must not be negative")
        for name in ("sam_disk_cache_max_gb", "image_cache_max_gb"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.upper()} must not be negative (0: no limit)")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        if self.device != "auto" and not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise SettingsError(f"DEVICE must be auto, cpu, cuda or cuda:N, not '{self.device}'")
        if self.model_name and self.model_name not in {"sam", "sam2", "sam2.1", "mobile_sam", "sam_hq", "sam3"}:
            raise SettingsError(f"MODEL_NAME must be sam, sam2, sam2.1, mobile_sam, sam_hq or sam3, not '{self.model_name}'")
        _validate_training(self)
        try:
            from backend.sources.url_policy import AllowList

            AllowList.parse(self.allowed_url_hosts)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.task_score not in {"quality", "mean"}:
            raise SettingsError(f"TASK_SCORE must be quality or mean, not '{self.task_score}'")
        if not 0 <= self.clusters <= MAX_CLUSTERS:
            raise SettingsError(f"CLUSTERS must be between 0 (off) and {MAX_CLUSTERS}, not {self.clusters}")
        if self.storage_read not in {"presign", "direct"}:
            raise SettingsError(f"STORAGE_READ must be presign or direct, not '{self.storage_read}'")
        try:
            from backend.sources.object_storage import parse_storage_options

            parse_storage_options(self.storage_options)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.label_studio_api_key and not self.label_studio_url:
            raise SettingsError("LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL: set LABEL_STUDIO_URL to your "
                                "Label Studio's address, the only host the key is ever sent to")

    @property
    def model_root_path(self) -> Path:
        return Path(self.model_root).expanduser().resolve()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()

    def as_environ(self) -> dict[str, str]:
        """The settings as environment variables, for processes started from this one."""
        return {f.name.upper(): "" if f.name in SECRET_FILES.values() else _format(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # the secrets themselves are passed, already read


def _validate_training(settings: Settings) -> None:
    for name in ("train_min_images", "train_epochs", "train_batch", "train_concurrency", "train_queue_length",
                 "train_keep_versions"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name.upper()} must be at least 1")
    if settings.train_every < 0 or settings.train_threads < 0:
        raise SettingsError("TRAIN_EVERY and TRAIN_THREADS must not be negative (0: off / automatic)")
    if settings.train_imgsz < 32 or settings.train_imgsz % 32:
        raise SettingsError(f"TRAIN_IMGSZ must be a multiple of 32 and at least 32, not {settings.train_imgsz}")
    device = settings.train_device
    if device and not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise SettingsError(f"TRAIN_DEVICE must be empty, cpu, cuda or cuda:N, not '{device}'")
    if settings.train_queue and not settings.train_queue.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"TRAIN_QUEUE must be a redis://, rediss:// or unix:// URL (or empty), not '{settings.train_queue}'")


def _coerce(name: str, annotation: Any, raw: Any) -> Any:
    kind = {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise ValueError
        if kind is int:
            return int(float(text)) if text.replace(".", "", 1).isdigit() else int(text)
        return kind(text)
    except ValueError:
        raise SettingsError(f"setting {name.upper()} ({name}) wants a {kind.__name__}, got '{raw}'") from None


def _read_secret(file_setting: str, path: str) -> str:
    try:
        value = Path(path).expanduser().read_text().rstrip("\r\n")  # a file written by `echo` ends in a newline
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{file_setting.upper()}={path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise SettingsError(f"{file_setting.upper()}={path} is empty")
    return value


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    rows = ["| env variable | `--with` key | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = _format(f.default) if f.default != "" else "(empty)"
        rows.append(f"| `{f.name.upper()}` | `{f.name}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
