"""Images in an S3 bucket (moto's S3 server) with a real Label Studio 1.23.2 whose project has that bucket
connected as S3 cloud storage: `tools.annotate_dir s3://...` writes tasks Label Studio resolves to the
bucket's images, and `tools.preannotate` predicts s3:// tasks the same way whether it reads the bucket
itself (`--read_storage direct`) or through Label Studio's presign (the default)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.e2e.conftest import DEMO_WITH, E2E_SEEDS, LabelStudio, shapes_png
from tests.s3_stand_in import KEY, REGION, SECRET, S3StandIn, moto_s3
from tools.annotate_dir import annotate
from tools.annotate_options import AnnotateOptions, label_config_xml
from tools.shapes_dataset import CLASS_NAMES

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "e2e-shapes"
CONFIG = label_config_xml(list(CLASS_NAMES), "polygons")


@pytest.fixture(scope="module")
def bucket() -> Iterator[S3StandIn]:
    with moto_s3(BUCKET) as s3:
        for seed in E2E_SEEDS:
            s3.put(BUCKET, f"photos/{'nested/' if seed % 2 else ''}shapes {seed}.png", shapes_png(seed))
        yield s3


def s3_project(label_studio: LabelStudio, s3: S3StandIn, title: str, tasks: list[dict]) -> int:
    """A project with the bucket connected as S3 storage (presigned URLs), holding `tasks`."""
    client = label_studio.client
    project_id = client.create_project(title, CONFIG)
    client.request("POST", "/api/storages/s3", json={
        "project": project_id, "title": "moto", "bucket": BUCKET, "prefix": "photos", "aws_access_key_id": KEY,
        "aws_secret_access_key": SECRET, "region_name": REGION, "s3_endpoint": s3.endpoint, "presign": True,
        "use_blob_urls": True})
    client.request("POST", f"/api/projects/{project_id}/import", json=tasks)
    return project_id


def project_tasks(label_studio: LabelStudio, project_id: int) -> list[dict]:
    answer = label_studio.client.request("GET", "/api/tasks", params={"project": project_id, "page_size": 100,
                                                                      "fields": "all", "resolve_uri": "false"}).json()
    return sorted(answer["tasks"], key=lambda task: task["data"]["image"])


def without_ids(regions: list[dict]) -> list[dict]:
    return [{key: value for key, value in region.items() if key != "id"} for region in regions]


def test_annotate_dir_tasks_resolve_to_the_buckets_images_in_label_studio(label_studio: LabelStudio, bucket: S3StandIn,
                                                                        tmp_path: Path) -> None:
    summary = annotate(AnnotateOptions(f"s3://{BUCKET}/photos", out_dir=tmp_path, model=str(MODELS_DIR / DEMO_SEG),
                                       shape="polygons", ls_tasks=tmp_path / "tasks.json",
                                       storage_options=tuple(bucket.storage_options.items()),
                                       overrides=(("cache_dir", str(tmp_path / "cache")),)), environ={})
    assert summary.tasks_converted == len(E2E_SEEDS)
    tasks = json.loads((tmp_path / "tasks.json").read_text())

    project_id = s3_project(label_studio, bucket, "annotate_dir s3", tasks)

    stored = project_tasks(label_studio, project_id)
    assert [task["data"]["image"] for task in stored] == sorted(task["data"]["image"] for task in tasks)
    for task in stored:
        (prediction,) = task["predictions"]
        expected = next(t for t in tasks if t["data"]["image"] == task["data"]["image"])["predictions"][0]
        assert without_ids(prediction["result"]) == without_ids(expected["result"]) and prediction["result"]
        # What the labeling interface loads: Label Studio's presign endpoint, redirecting to the bucket.
        key = task["data"]["image"].removeprefix(f"s3://{BUCKET}/")
        fileuri = base64.urlsafe_b64encode(task["data"]["image"].encode()).decode()
        image = label_studio.client.request("GET", f"/tasks/{task['id']}/presign/", params={"fileuri": fileuri})
        assert image.content == bucket.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.mark.parametrize("read_storage", ["direct", "presign"])
def test_preannotate_predicts_s3_tasks_by_reading_the_bucket_or_through_presign(
        label_studio: LabelStudio, bucket: S3StandIn, tmp_path: Path, read_storage: str) -> None:
    urls = sorted(f"s3://{BUCKET}/photos/{'nested/' if seed % 2 else ''}shapes {seed}.png" for seed in E2E_SEEDS)
    project_id = s3_project(label_studio, bucket, f"preannotate s3 {read_storage}", [{"data": {"image": u}} for u in urls])
    settings = [*DEMO_WITH, f"cache_dir={tmp_path / 'cache'}"]
    environ = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    if read_storage == "direct":  # the job's own credentials, from the environment
        flags = ["--read_storage", "direct", "--storage_option", f"endpoint_url={bucket.endpoint}"]
        environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION})
    else:
        flags = []
        settings.append("allow_private_urls=true")  # Label Studio's presigned URLs point at the loopback bucket

    run = subprocess.run([sys.executable, "-m", "tools.preannotate", "--ls_url", label_studio.url,
                          "--api_key", label_studio.personal_access_token(), "--project", str(project_id),
                          "--with", *settings, *flags],
                         cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=600)

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
    assert f"predicted and written: {len(urls)}" in run.stdout
    stored = project_tasks(label_studio, project_id)
    expected = annotate_regions(bucket, tmp_path)
    assert [without_ids(task["predictions"][0]["result"]) for task in stored] == expected


def annotate_regions(bucket: S3StandIn, tmp_path: Path) -> list[list[dict]]:
    """The regions annotate_dir predicts for the bucket's images, in URL order."""
    annotate(AnnotateOptions(f"s3://{BUCKET}/photos", out_dir=tmp_path / "reference", shape="polygons",
                             ls_tasks=tmp_path / "reference.json", storage_options=tuple(bucket.storage_options.items()),
                             overrides=tuple(pair.split("=", 1) for pair in (*DEMO_WITH, f"cache_dir={tmp_path}"))),
             environ={})
    tasks = sorted(json.loads((tmp_path / "reference.json").read_text()), key=lambda task: task["data"]["image"])
    return [without_ids(task["predictions"][0]["result"]) for task in tasks]
