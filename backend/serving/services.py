"""Everything a request needs, built once per process: models, image fetcher, predictors, metrics.

Also what the process says about its models: their versions for a labeling config, the default
models loaded in the background at start-up (a model that cannot load is an ERROR in the log and a
line in /health, not a surprise on the first /predict), and the config-to-model label check.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from backend.serving.config_check import ConfigReporter
from backend.sources.images import ImageFetcher, image_cache_budget
from formats.label_config import LabelConfig
from backend.sources.label_studio import AccessTokens, Credentials, SetupStore, project_uid
from backend.sources.token_check import TokenCheck
from backend.serving.metrics import Metrics
from backend.sources.object_storage import direct_storage
from backend.models.cache import ModelCache, ModelPathError, select_device
from backend.prediction.demo_stand_ins import DemoFallbackYoloModels
from backend.prediction.predictor import BatchPredictor, YoloModels
from backend.training.model_choice import ModelChoice, model_choice
from backend.settings import Settings
from backend.sources.url_policy import AddressPolicy
from backend.training.service import TrainingService
from backend.models.versions import join_tags, model_tag

logger = logging.getLogger(__name__)

DEMO_COMMAND = ("label-studio-ml start backend --port 9090 --with yolo_det_model=demo-shapes-det.pt "
                "yolo_seg_model=demo-shapes-seg.pt")


class BackgroundLoads:
    """The daemon threads that load models (the defaults at start-up, a /setup's config check), so that shutdown
    can wait for them: a process that exits while torch loads a model aborts ("terminate called without an
    active exception"). At most `limit` run at once; a config check beyond is skipped (the next /setup does it)."""

    def __init__(self, limit: int = 4) -> None:
        self._limit = limit
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, target: Any, *args: object, name: str) -> threading.Thread | None:
        with self._lock:
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            if len(self._threads) >= self._limit:
                return None
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            self._threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


@dataclass
class Services:
    settings: Settings
    device: str
    models: ModelCache
    yolo: YoloModels
    fetcher: ImageFetcher
    setup_store: SetupStore
    predictor: BatchPredictor
    metrics: Metrics
    interactive: Any = None  # backend.interactive.sam.InteractivePredictor when a SAM model is configured
    started_at: float = field(default_factory=time.time)
    model_errors: dict[str, str] = field(default_factory=dict)  # setting -> why its model did not load
    reporter: ConfigReporter = field(default_factory=ConfigReporter)
    ignored_hosts: set[str] = field(default_factory=set)  # /setup hostnames not used, as LABEL_STUDIO_URL is set
    training: TrainingService = None  # type: ignore[assignment]  # always set by build_services
    token_check: TokenCheck | None = None
    background: BackgroundLoads = field(default_factory=BackgroundLoads)

    def credentials(self, project: str | None) -> Credentials | None:
        """LABEL_STUDIO_URL (with LABEL_STUDIO_API_KEY, else the token /setup sent) for every project when set;
        otherwise what /setup said (in any worker) for this project uid. The key never goes to another host."""
        saved = self.setup_store.load(project)
        if self.settings.label_studio_url:
            token = self.settings.label_studio_api_key or saved.get("access_token") or ""
            return Credentials(self.settings.label_studio_url.rstrip("/"), token)
        hostname = (saved.get("hostname") or "").rstrip("/")
        token = saved.get("access_token") or ""
        return Credentials(hostname, token, bool(saved.get("trusted", True))) if hostname or token else None

    def save_setup(self, project: str | None, hostname: str, access_token: str, label_config: str | None,
                   trusted: bool) -> None:
        """Keep /setup's answer (SetupConflict when the uid is bound to another host). With LABEL_STUDIO_URL set
        the hostname is not used, and said so once per host. A trusted caller's /setup (Label Studio itself)
        also gives the project an earlier version's trained models."""
        own = self.settings.label_studio_url.rstrip("/")
        if own and hostname:
            if hostname != own and hostname not in self.ignored_hosts and len(self.ignored_hosts) < 100:
                self.ignored_hosts.add(hostname)
                logger.info("LABEL_STUDIO_URL=%s is set: the hostname %s named in /setup is not used (said once)",
                            own, hostname[:200])
            hostname = ""
        self.setup_store.save(project, hostname, access_token, label_config, trusted)
        if trusted and (uid := project_uid(project)) is not None:
            self.training.adopt_legacy(uid)

    def check_token_in_background(self, project: str | None) -> None:
        """After /setup: does Label Studio accept the token downloads will use? (An ERROR with the fix if not.)"""
        credentials = self.credentials(project)
        if self.token_check is not None and (credentials is None or credentials.trusted):  # not an untrusted host
            source = "LABEL_STUDIO_API_KEY" if self.settings.label_studio_api_key else "the token Label Studio sent in /setup"
            self.token_check.check_in_background(credentials, source)

    # ------------------------------------------------------------ versions

    def model_version(self, config: LabelConfig | None = None, project: object = None) -> str:
        """The models that answer `config` (the default models without one), by file name and content hash."""
        if self.settings.model_version:
            return self.settings.model_version
        if config is None:
            files = [self.yolo.path(choice) for choice in self.default_choices() if self._resolvable(choice)]
            uses_sam = True
        else:
            files = self.predictor.model_files(config, project)
            uses_sam = config.has_prompts or (self.settings.yolo_sam and bool(config.prediction_controls))
        tags = [model_tag(path) for path in files]
        if self.interactive is not None and self.interactive.checkpoint is not None and uses_sam:
            tags.append(model_tag(self.interactive.checkpoint))
        return join_tags(tags)

    def default_choices(self) -> tuple[ModelChoice, ModelChoice]:
        return (ModelChoice(self.settings.yolo_det_model, "YOLO_DET_MODEL"),
                ModelChoice(self.settings.yolo_seg_model, "YOLO_SEG_MODEL"))

    def _resolvable(self, choice: ModelChoice) -> bool:
        try:
            self.yolo.path(choice)
        except ModelPathError:
            return False
        return True

    # ------------------------------------------------------------ start-up and config checks

    def load_default_models(self) -> None:
        """Load YOLO_DET_MODEL and YOLO_SEG_MODEL; failures are logged with what to do and kept for /health."""
        for choice in self.default_choices():
            try:
                model = self.yolo.get(choice)
            except ModelPathError as exc:
                self.model_errors[choice.setting] = str(exc)
                logger.error("%s cannot be loaded: %s. Put the file in MODEL_ROOT (%s), name another file with "
                             "%s, or run on the demo models this repository ships: %s", choice.setting, exc,
                             self.settings.model_root_path, choice.setting, DEMO_COMMAND)
                continue
            self.model_errors.pop(choice.setting, None)
            logger.info("%s=%s loaded (%s): %s model, classes %s", choice.setting, choice.path_value, model.path.name,
                        model.task, ", ".join(model.class_names[:20]) + (" ..." if len(model.class_names) > 20 else ""))
        self._hash_concept_model()

    def _hash_concept_model(self) -> None:
        """CONCEPT_MODEL's content hash names it in model versions: computed now, not in the first /setup
        (Label Studio waits 3 s on it; Meta's sam3.pt is 3.4 GB)."""
        try:
            path = self.predictor.concepts.concept_model()
        except ModelPathError as exc:
            logger.error("%s", exc)
            return
        if path is not None:
            logger.info("CONCEPT_MODEL=%s: SAM 3 checkpoint %s", self.settings.concept_model, model_tag(path))

    def start_loading_default_models(self) -> threading.Thread | None:
        return self.background.start(self.load_default_models, name="load-default-models")

    def report_config(self, config: LabelConfig, project: object = None) -> None:
        """Log (once per config and model) which labels each control's model can produce; loads the models."""
        self.reporter.report_tags(config)
        for control in config.prediction_controls:
            if self.predictor.concepts.checkpoint_of(control) is not None:
                self.predictor.concepts.report(control, None)  # model_path names SAM 3
                continue
            choice = model_choice(control, self.settings, project)
            try:
                model = self.yolo.get(choice)
            except ModelPathError as exc:
                logger.warning("<%s name=\"%s\"> cannot be predicted: %s", control.tag, control.name, exc)
                continue
            self.reporter.report_control(control, (str(model.path), model.class_names), model.path.name,
                                         model.class_names)
            self.predictor.concepts.report(control, model.class_names)  # CONCEPT_MODEL's labels

    def report_config_in_background(self, config: LabelConfig, project: object = None) -> None:
        if self.background.start(self.report_config, config, project, name="config-check") is None:
            logger.debug("config check skipped: other model loads are running; the next /setup checks it")


def build_services(settings: Settings) -> Services:
    device = select_device(settings.device)
    cache = ModelCache()
    tokens = AccessTokens(timeout=settings.download_timeout)
    fetcher = ImageFetcher(settings.cache_path / "images", settings.local_files_document_root,
                           settings.download_timeout, settings.max_image_pixels, tokens,
                           settings.max_download_bytes,
                           AddressPolicy.from_settings(settings.allow_private_urls, settings.allowed_url_hosts),
                           direct_storage(settings), image_cache_budget(settings))
    yolo = DemoFallbackYoloModels(settings, cache, device)
    metrics = Metrics()
    interactive = None
    box_segmenter = on_image = None
    if settings.model_name:
        from backend.interactive.sam import build_interactive

        interactive = build_interactive(settings, cache, device, fetcher,
                                        lambda result: metrics.embedding_cache.labels(result).inc())
        if settings.yolo_sam:
            box_segmenter = interactive.masks_for_boxes
        if settings.sam_prefetch:
            on_image = interactive.prefetch
    predictor = BatchPredictor(settings, yolo, fetcher, box_segmenter=box_segmenter, on_image=on_image)
    return Services(settings, device, cache, yolo, fetcher, SetupStore(settings.cache_path / "setup", settings.max_setup_projects), predictor,
                    metrics, interactive, training=TrainingService(settings),
                    token_check=TokenCheck(tokens, settings.cache_path / "token-check.json", settings.download_timeout))
