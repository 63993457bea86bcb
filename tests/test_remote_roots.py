"""Cloud storage image roots (tools.annotate_dir s3://...) and direct bucket reads (STORAGE_READ=direct,
tools.preannotate --read_storage direct) against a real S3 protocol server (moto) through s3fs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from backend.sources.images import ImageError, ImageFetcher, url_kind
from backend.sources.label_studio import AccessTokens
from backend.sources.object_storage import ObjectStorage, StorageError, label_studio_url, object_path, storage_protocol
from backend.settings import Settings, SettingsError
from tests.conftest import DEMO_SEG, MODELS_DIR, demo_settings, local_url
from tests.fake_label_studio_api import PROJECT_ID, TOKEN, FakeLabelStudioAPI
from tests.s3_stand_in import moto_s3
from tests.test_preannotate import CONFIG, FAST_RETRY, assert_same_regions, without_ids
from tools.annotate_dir import annotate, main
from tools.annotate_options import AnnotateError, AnnotateOptions
from tools.preannotate.__main__ import job_settings
from tools.preannotate.job import JobOptions, run_local
from tools.remote_files import RemoteImages, RootError, image_root, parse_option_pairs
from tools.shapes_dataset import generate_image

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "shapes"
SEEDS = range(6100, 6105)
ONE_MB = 1_000_000


@pytest.fixture(scope="module")
def s3() -> Iterator[dict]:
    """A moto S3 server with the bucket; yields the fsspec storage options that reach it and a boto3 client."""
    with moto_s3(BUCKET) as server:
        yield {"options": server.storage_options, "client": server.client}


@pytest.fixture(scope="module")
def photos(s3: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tree on disk and under s3://shapes/photos/: shapes PNGs (one nested two folders deep), a text
    file, a hidden image, a broken JPEG."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a" / "b").mkdir(parents=True)
    for seed in SEEDS:
        folder = root / "a" / "b" if seed % 2 else root
        cv2.imwrite(str(folder / f"shape {seed}.png"), generate_image(seed).image)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes((root / f"shape {SEEDS[0]}.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    for path in root.rglob("*"):
        if path.is_file():
            s3["client"].put_object(Bucket=BUCKET, Key=f"photos/{path.relative_to(root).as_posix()}", Body=path.read_bytes())
    return root


def options_for(root: Path | str, out: Path, storage_options: dict, **extra: object) -> AnnotateOptions:
    return AnnotateOptions(root, out_dir=out, model=str(MODELS_DIR / DEMO_SEG), shape="polygons", batch=2,
                           ls_tasks=out / "tasks.json", storage_options=tuple(storage_options.items()),
                           overrides=(("model_score_threshold", "0.25"), ("cache_dir", str(out / "cache"))), **extra)


def outputs(out: Path) -> tuple[dict, list[dict]]:
    return (json.loads((out / "annotations" / "instances_default.json").read_text()),
            json.loads((out / "tasks.json").read_text()))


def task_regions(tasks: list[dict]) -> list[list[dict]]:
    return [without_ids(task["predictions"][0]["result"]) for task in tasks]


def test_an_s3_root_gives_the_local_folders_dataset_with_s3_urls(s3: dict, photos: Path, tmp_path: Path) -> None:
    local = annotate(options_for(photos, tmp_path / "local", {}), environ={})
    remote = annotate(options_for(f"s3://{BUCKET}/photos/", tmp_path / "s3", s3["options"]), environ={})

    (coco, tasks), (s3_coco, s3_tasks) = outputs(tmp_path / "local"), outputs(tmp_path / "s3")
    assert s3_coco["images"] == coco["images"] and len(coco["images"]) == len(SEEDS)
    assert s3_coco["annotations"] == coco["annotations"] and coco["annotations"]
    assert s3_coco["categories"] == coco["categories"]
    assert sorted(image["file_name"] for image in coco["images"]) == sorted(
        f"a/b/shape {seed}.png" if seed % 2 else f"shape {seed}.png" for seed in SEEDS)
    assert [t["data"]["image"] for t in s3_tasks] == [f"s3://{BUCKET}/photos/{image['file_name']}" for image in coco["images"]]
    assert task_regions(s3_tasks) == task_regions(tasks)
    for summary in (local, remote):
        assert summary.tasks_skipped == {"unreadable image": 1} and "broken.jpg: cannot decode image" in summary.report()


@pytest.mark.slow
def test_an_s3_root_on_ray_actors_that_read_the_bucket_themselves(s3: dict, photos: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    annotate(options_for(photos, tmp_path / "local", {}), environ={})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = annotate(options_for(f"s3://{BUCKET}/photos", tmp_path / "ray", s3["options"], ray="local"), environ={})
    finally:
        ray.shutdown()

    (coco, tasks), (ray_coco, ray_tasks) = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert ray_coco["images"] == coco["images"]
    assert [(a["image_id"], a["category_id"]) for a in ray_coco["annotations"]] == \
        [(a["image_id"], a["category_id"]) for a in coco["annotations"]]
    for ours, theirs in zip(ray_coco["annotations"], coco["annotations"]):
        assert ours["bbox"] == pytest.approx(theirs["bbox"], abs=0.5)
    assert [t["data"]["image"] for t in ray_tasks] == [f"s3://{BUCKET}/photos/{i['file_name']}" for i in coco["images"]]
    assert summary.tasks_skipped == {"unreadable image": 1} and "broken.jpg" in summary.report()


def test_listing_is_recursive_sorted_images_only_and_skips_hidden_names(s3: dict, photos: Path) -> None:
    client = s3["client"]
    for key in ("edge/z.PNG", "edge/deep/er/m.jpeg", "edge/a#1?.png", "edge/.cache/x.png", "edge/readme.md", "edge-sibling/no.png",
                "edge/dir/"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    urls = RemoteImages(f"s3://{BUCKET}/edge", s3["options"]).list_urls({".png", ".jpeg"})

    assert urls == [f"s3://{BUCKET}/edge/a#1?.png", f"s3://{BUCKET}/edge/deep/er/m.jpeg", f"s3://{BUCKET}/edge/z.PNG"]
    assert ObjectStorage(s3["options"]).read(urls[0], ONE_MB) == b"x"
    whole_bucket = RemoteImages(f"s3://{BUCKET}", s3["options"]).list_urls({".png"})
    assert f"s3://{BUCKET}/edge-sibling/no.png" in whole_bucket and whole_bucket == sorted(whole_bucket)


@pytest.mark.parametrize("root, message", [
    (f"s3://{BUCKET}/nothing-here", "no images"),
    (f"s3://{BUCKET}/photos/notes.txt", "is an object, not a folder"),
    ("s3://no-such-bucket/photos", "'s3://no-such-bucket/photos' not found"),
])
def test_roots_without_images_are_one_clear_error(s3: dict, photos: Path, tmp_path: Path, root: str, message: str) -> None:
    with pytest.raises(AnnotateError, match=message):
        annotate(options_for(root, tmp_path, s3["options"]), environ={})
    assert not (tmp_path / "annotations").exists()


def test_remote_roots_need_out_dir_and_refuse_ls_root(s3: dict, tmp_path: Path) -> None:
    with pytest.raises(AnnotateError, match="--out_dir is required"):
        annotate(AnnotateOptions(f"s3://{BUCKET}/photos"), environ={})
    with pytest.raises(AnnotateError, match="--ls_root is for local folders"):
        annotate(options_for(f"s3://{BUCKET}/photos", tmp_path, s3["options"], ls_root=tmp_path), environ={})


def test_a_denied_object_fails_alone_with_its_reason(s3: dict, photos: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_cat = s3fs.S3FileSystem._cat_file

    async def deny_one(self, path: str, *args: object, **kwargs: object) -> bytes:  # noqa: ANN001
        if path.endswith(f"shape {SEEDS[0]}.png"):
            raise PermissionError("Access Denied")
        return await real_cat(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", deny_one)
    fresh = {**s3["options"], "skip_instance_cache": True}  # an instance made after the patch
    summary = annotate(options_for(f"s3://{BUCKET}/photos", tmp_path, fresh), environ={})

    coco, tasks = outputs(tmp_path)
    assert len(coco["images"]) == len(tasks) == len(SEEDS) - 1
    assert summary.tasks_skipped == {"unreadable image": 2}
    assert f"shape {SEEDS[0]}.png: permission denied to read 's3://{BUCKET}/photos/shape {SEEDS[0]}.png'" in summary.report()


def test_the_fetcher_reads_cloud_urls_directly_in_memory_or_into_the_cache(s3: dict, photos: Path, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path / "cache", "", 5.0, 10**8, AccessTokens(timeout=5.0), ONE_MB, storage=ObjectStorage(s3["options"]))
    url = f"s3://{BUCKET}/photos/a/b/shape {SEEDS[1]}.png"

    image = fetcher.load(url, 1, None)  # no Label Studio credentials needed: nothing is presigned

    expected = cv2.cvtColor(generate_image(SEEDS[1]).image, cv2.COLOR_BGR2RGB)
    assert (image.pixels == expected).all()
    assert not (tmp_path / "cache").exists()  # load() keeps the bytes in memory
    assert fetcher.fetch(url, 1, None).read_bytes() == (photos / "a" / "b" / f"shape {SEEDS[1]}.png").read_bytes()
    with pytest.raises(ImageError, match=f"'s3://{BUCKET}/photos/absent.png' not found"):
        fetcher.load(f"s3://{BUCKET}/photos/absent.png", 2, None)
    small = ImageFetcher(tmp_path / "cache", "", 5.0, 10**8, AccessTokens(timeout=5.0), 100, storage=ObjectStorage(s3["options"]))
    with pytest.raises(ImageError, match="more than MAX_DOWNLOAD_BYTES=100"):
        small.load(url, 3, None)


@pytest.mark.parametrize("url, package", [("s3://b/k.png", "s3fs"), ("gs://b/k.png", "gcsfs"),
                                          ("azure-blob://c/k.png", "adlfs")])
def test_a_missing_protocol_package_names_the_extra(url: str, package: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    fetcher = ImageFetcher(tmp_path, "", 5.0, 10**8, AccessTokens(timeout=5.0), ONE_MB, storage=ObjectStorage())
    with pytest.raises(ImageError, match=rf"needs the {package} package.*pip install -e '\.\[remote\]'"):
        fetcher.load(url, 1, None)


@pytest.mark.parametrize("root, package", [("s3://b/p", "s3fs"), ("gs://b/p", "gcsfs"), ("az://c/p", "adlfs")])
def test_annotate_dir_without_the_package_exits_with_one_sentence(root: str, package: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, package, None)
    assert main([root, "--out_dir", str(tmp_path), "--model", str(MODELS_DIR / DEMO_SEG)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs the {package} package" in err and "pip install -e '.[remote]'" in err
    assert "Traceback" not in err


def test_url_dispatch() -> None:
    assert [storage_protocol(u) for u in ("s3://b/k", "gs://b/k", "gcs://b/k", "az://c/b", "abfs://c/b",
                                          "azure-blob://c/b", "http://h/x", "/data/upload/1/x.png", "file:///x")] == \
        ["s3", "gcs", "gcs", "az", "az", "az", None, None, None]
    assert label_studio_url("az://c/p/x.png") == "azure-blob://c/p/x.png"
    assert label_studio_url("gcs://b/x.png") == "gs://b/x.png" and label_studio_url("s3://b/x") == "s3://b/x"
    assert object_path("s3://bucket/a%20b/c#1.png") == "bucket/a%20b/c#1.png" and object_path("s3://bucket/") == "bucket"
    assert {url_kind(u) for u in ("s3://b/k", "gs://b/k", "azure-blob://c/b")} == {"cloud"}
    assert image_root("az://c/p") == "az://c/p" and RemoteImages("az://c/p/", {}).root == "azure-blob://c/p"
    assert image_root("file:///data/my%20photos") == Path("/data/my photos") and image_root("photos") == Path("photos")
    for bad in ("http://host/images/", "ftp://host/x"):
        with pytest.raises(RootError):
            image_root(bad)
    with pytest.raises(StorageError, match="not an s3://"):
        ObjectStorage().read("http://host/x.png", ONE_MB)


def test_storage_options_from_settings_and_the_command_line() -> None:
    assert parse_option_pairs(["endpoint_url=http://m:9000", "anon=true", "client_kwargs={\"region_name\": \"eu\"}"]) == \
        {"endpoint_url": "http://m:9000", "anon": True, "client_kwargs": {"region_name": "eu"}}
    with pytest.raises(RootError, match="key=value"):
        parse_option_pairs(["novalue"])
    with pytest.raises(SettingsError, match="STORAGE_OPTIONS must be a JSON object"):
        Settings.load({"storage_options": "endpoint_url=x"}, environ={})
    with pytest.raises(SettingsError, match="STORAGE_READ must be presign or direct"):
        Settings.load({"storage_read": "fsspec"}, environ={})
    assert Settings.load(environ={}).storage_read == "presign"  # Label Studio presigns unless told otherwise

    settings = job_settings(None, ["storage_options={\"anon\": false, \"endpoint_url\": \"http://a\"}"], "direct",
                            ["endpoint_url=http://b"])
    assert settings.storage_read == "direct"
    assert json.loads(settings.storage_options) == {"anon": False, "endpoint_url": "http://b"}


def preannotate_s3_and_local(s3: dict, photos: Path, tmp_path: Path, run_direct) -> tuple[dict, dict, object]:  # noqa: ANN001
    """Predictions written for the same images as Local Storage tasks (one process) and as s3:// tasks
    read directly by `run_direct`; the last task's object does not exist."""
    names = [f"shape {seed}.png" for seed in SEEDS if not seed % 2] + ["absent.png"]
    written = {}
    for how, url_of, overrides in (
            ("local", local_url, {}),
            ("direct", lambda name: f"s3://{BUCKET}/photos/{name}",
             {"storage_read": "direct", "storage_options": json.dumps(s3["options"])})):
        settings = demo_settings(photos, tmp_path / how, device="cpu", **overrides)
        with FakeLabelStudioAPI(CONFIG, len(names), lambda i: {"image": url_of(names[i])}) as fake:
            options = JobOptions(fake.url, TOKEN, PROJECT_ID, settings, batch=2, retry=FAST_RETRY)
            summary = run_local(options) if how == "local" else run_direct(options)
            written[how] = {task_id: p[0]["result"] for task_id, p in fake.predictions.items() if p}
        assert (summary.predicted, summary.failed) == (len(names) - 1, {"image cannot be read": 1})
    assert f"'s3://{BUCKET}/photos/absent.png' not found" in " ".join(summary.examples)
    return written["local"], written["direct"], summary


def test_preannotate_reads_cloud_task_urls_itself_with_read_storage_direct(s3: dict, photos: Path, tmp_path: Path) -> None:
    local, direct, _ = preannotate_s3_and_local(s3, photos, tmp_path, run_local)
    assert {k: without_ids(v) for k, v in direct.items()} == {k: without_ids(v) for k, v in local.items()}
    assert any(local.values())


@pytest.mark.slow
def test_preannotate_ray_actors_read_cloud_task_urls_themselves(s3: dict, photos: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from tools.preannotate.ray_job import RayOptions, run_on_ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        local, direct, summary = preannotate_s3_and_local(s3, photos, tmp_path,
                                                          lambda options: run_on_ray(options, RayOptions(actors=2)))
    finally:
        ray.shutdown()
    assert summary.workers >= 1 and sorted(direct) == sorted(local)  # predicted (and read) by actor processes
    for task_id, regions in direct.items():
        assert_same_regions(regions, local[task_id])


def test_incomplete_credentials_are_named_as_such(s3: dict, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-the-key")  # the secret is missing
    options = {"endpoint_url": s3["options"]["endpoint_url"], "skip_instance_cache": True}
    with pytest.raises(RootError, match=f"no usable credentials to list 's3://{BUCKET}/photos'.*AWS_"):
        RemoteImages(f"s3://{BUCKET}/photos", options).list_urls({".png"})
