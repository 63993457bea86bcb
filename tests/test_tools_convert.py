"""Label Studio export -> COCO: exactness, completeness, the report, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from formats.geometry import mask_to_box, polygon_area
from tests.fake_label_studio import FakeLabelStudio
from tests.tools_exports import (annotation, brush_result, polygon_result, rectangle_result, result, shapes_tasks, task,
                                 upload_image, write_export)
from backend.sources.export_downloads import ExportDownloader
from formats.coco_dataset import convert
from formats.conversion import ConversionError, ConvertOptions
from formats.export_images import ImageSources
from formats.ls_export import Selection, Summary
from tools.convert_to_rle_mask_coco import main
from tools.shapes_dataset import CLASS_NAMES


def run(export: Path, out_dir: Path, ls_data_dir: Path, **options: object) -> tuple[dict, object]:
    sources = options.pop("sources", None) or ImageSources(ls_data_dir)
    summary = convert(ConvertOptions(json_file_path=export, out_dir=out_dir, sources=sources, **options))
    return json.loads((out_dir / "annotations" / "ann.json").read_text()), summary


def blob_mask(width: int, height: int, seed: int) -> np.ndarray:
    """An irregular mask with holes and several parts, touching the image border."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 1, width // 8 + 1)) > 0.6
    mask = np.kron(coarse, np.ones((8, 8), dtype=bool))[:height, :width]
    mask[rng.random((height, width)) > 0.97] ^= True
    return mask


def test_brush_masks_become_rle_that_decodes_pixel_exact(tmp_path: Path) -> None:
    ls_dir = tmp_path / "ls"
    tasks = shapes_tasks(ls_dir, range(100, 104))
    wide_mask, tall_mask = blob_mask(300, 170, 1), blob_mask(300, 170, 2)
    wide_url = upload_image(ls_dir, "0000000a-wide.png", np.zeros((170, 300, 3), np.uint8))
    wide_task = task(7, wide_url, [annotation([brush_result(wide_mask, "circle", "w1"), brush_result(tall_mask, "square", "w2")])])
    export = write_export(tmp_path / "export.json", [t for t, _ in tasks] + [wide_task])

    coco_dict, summary = run(export, tmp_path / "out", ls_dir)
    coco = COCO(str(tmp_path / "out" / "annotations" / "ann.json"))

    expected = {t["id"]: [(CLASS_NAMES[i.class_id], i.mask) for i in sample.instances] for t, sample in tasks}
    expected[7] = [("circle", wide_mask), ("square", tall_mask)]
    assert sorted(image["ls_task_id"] for image in coco_dict["images"]) == sorted(expected)
    names = {c["id"]: c["name"] for c in coco_dict["categories"]}
    for image in coco_dict["images"]:
        assert (tmp_path / "out" / "images" / image["file_name"]).is_file()
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(annotations) == len(expected[image["ls_task_id"]])
        for ann, (label, mask) in zip(annotations, expected[image["ls_task_id"]]):
            assert names[ann["category_id"]] == label
            assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["area"] == mask.sum()
            x1, y1, x2, y2 = mask_to_box(mask)
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert ann["iscrowd"] == 0
    assert summary.regions["brush"] == sum(len(v) for v in expected.values())
    assert not summary.skipped_anything


def test_polygons_keep_their_points_and_exact_area(tmp_path: Path) -> None:
    width, height = 400, 250
    points = np.array([[10.5, 20.0], [300.25, 40.0], [350.0, 200.0], [120.0, 230.5], [60.0, 120.0]])
    url = upload_image(tmp_path / "ls", "00000001-p.png", np.zeros((height, width, 3), np.uint8))
    export = write_export(tmp_path / "e.json", [task(1, url, [annotation([polygon_result(points, "cat", width, height)])])])

    coco_dict, _ = run(export, tmp_path / "out", tmp_path / "ls")

    (ann,) = coco_dict["annotations"]
    assert np.allclose(np.array(ann["segmentation"][0]).reshape(-1, 2), points, atol=1e-9)
    assert ann["area"] == pytest.approx(polygon_area(points), abs=1e-6)
    assert ann["bbox"] == pytest.approx([10.5, 20.0, 350.0 - 10.5, 230.5 - 20.0])


def test_rotated_rectangles_become_their_rotated_polygon(tmp_path: Path) -> None:
    width, height = 400, 200  # not square: percent units differ on the two axes
    value = {"x": 10.0, "y": 10.0, "width": 20.0, "height": 10.0, "rotation": 90, "rectanglelabels": ["cat"]}
    url = upload_image(tmp_path / "ls", "00000001-r.png", np.zeros((height, width, 3), np.uint8))
    rotated = result("rectanglelabels", value, width, height)
    upright = rectangle_result((100, 50, 180, 90), "cat", width, height, region_id="u")
    export = write_export(tmp_path / "e.json", [task(1, url, [annotation([rotated, upright])])])

    coco_dict, summary = run(export, tmp_path / "out", tmp_path / "ls")

    rotated_ann, upright_ann = coco_dict["annotations"]
    # Anchor (40, 20), 80 x 20 px, turned 90 degrees clockwise around the anchor.
    assert np.allclose(np.array(rotated_ann["segmentation"][0]).reshape(-1, 2), [[40, 20], [40, 100], [20, 100], [20, 20]])
    assert rotated_ann["bbox"] == pytest.approx([20, 20, 20, 80])
    assert rotated_ann["area"] == pytest.approx(1600)
    assert upright_ann["bbox"] == pytest.approx([100, 50, 80, 40])
    assert upright_ann["area"] == pytest.approx(3200)
    assert summary.regions == {"rotated rectangle": 1, "rectangle": 1}


def test_category_ids_follow_classes_then_labeling_config_then_first_seen(tmp_path: Path) -> None:
    url = upload_image(tmp_path / "ls", "00000001-c.png", np.zeros((100, 100, 3), np.uint8))
    results = [rectangle_result((1, 1, 20, 20), label, 100, 100, region_id=label) for label in ("dog", "cat", "bird")]
    export = write_export(tmp_path / "e.json", [task(1, url, [annotation(results)])])
    config = tmp_path / "config.xml"
    config.write_text('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                      '<Label value="bird"/><Label value="cat"/><Label value="dog"/></RectangleLabels></View>')

    first_seen, _ = run(export, tmp_path / "a", tmp_path / "ls")
    from_config, _ = run(export, tmp_path / "b", tmp_path / "ls", label_config=config)
    from_classes, summary = run(export, tmp_path / "c", tmp_path / "ls", classes=("cat", "dog"), label_config=config)

    assert [c["name"] for c in first_seen["categories"]] == ["dog", "cat", "bird"]
    assert [c["name"] for c in from_config["categories"]] == ["bird", "cat", "dog"]
    assert [(c["id"], c["name"]) for c in from_classes["categories"]] == [(0, "cat"), (1, "dog")]
    assert [a["category_id"] for a in from_classes["annotations"]] == [1, 0]
    assert summary.regions_skipped == {"unknown label 'bird'": 1}
    assert summary.skipped_anything


def test_latest_non_cancelled_annotation_by_default_all_or_predictions_on_request(tmp_path: Path) -> None:
    url = upload_image(tmp_path / "ls", "00000001-s.png", np.zeros((100, 100, 3), np.uint8))
    box = lambda label: [rectangle_result((10, 10, 50, 50), label, 100, 100)]  # noqa: E731
    annotations = [annotation(box("old"), 1, "2024-05-01T10:00:00Z"),
                   annotation(box("new"), 2, "2024-05-02T10:00:00Z"),
                   annotation(box("cancelled"), 3, "2024-05-03T10:00:00Z", was_cancelled=True)]
    predictions = [{"id": 9, "result": box("predicted"), "score": 0.9, "model_version": "v1", "created_at": "2024-05-01T00:00:00Z"}]
    tasks = [task(1, url, annotations, predictions),
             task(2, url, [annotation(box("x"), 4, was_cancelled=True)]),
             task(3, url, [])]
    export = write_export(tmp_path / "e.json", tasks)

    latest, summary = run(export, tmp_path / "a", tmp_path / "ls")
    every, _ = run(export, tmp_path / "b", tmp_path / "ls", selection=Selection(all_annotations=True))
    predicted, _ = run(export, tmp_path / "c", tmp_path / "ls", selection=Selection(use_predictions=True))

    assert [c["name"] for c in latest["categories"]] == ["new"]
    assert len(latest["images"]) == 1
    assert sorted(c["name"] for c in every["categories"]) == ["new", "old"]
    assert len(every["images"]) == 1 and len(every["annotations"]) == 2
    assert [c["name"] for c in predicted["categories"]] == ["predicted"]
    assert summary.tasks_skipped == {"cancelled annotation": 1, "no annotations": 1}
    assert summary.cancelled_annotations == 2


@pytest.mark.parametrize("tool", ["convert_to_rle_mask_coco", "ls_to_yolo"])
def test_predictions_listed_by_id_say_how_to_export_them_in_full(tmp_path: Path, tool: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Label Studio's plain JSON export lists predictions by id; --predictions names the snapshot option that includes them."""
    import importlib

    url = upload_image(tmp_path / "ls", "00000001-s.png", np.zeros((100, 100, 3), np.uint8))
    box = [rectangle_result((10, 10, 50, 50), "cat", 100, 100)]
    export = write_export(tmp_path / "e.json", [{**task(1, url, [annotation(box)]), "predictions": [3, 4]},
                                                task(2, url, [annotation(box)])])
    main_of_tool = importlib.import_module(f"tools.{tool}").main

    code = main_of_tool(["--json_file_path", str(export), "--out_dir", str(tmp_path / "out"), "--ls_data_dir",
                         str(tmp_path / "ls"), "--predictions"])

    out = capsys.readouterr().out
    assert code == 0
    assert "predictions listed by id only: 1, no predictions: 1" in out
    assert 'POST /api/projects/<id>/exports/ with the body {"serialization_options": {"predictions": {"only_id": false}}}' in out
    plain = Summary()
    plain.skip_task(2, "no predictions")
    assert "only_id" not in plain.report()


def test_every_left_out_region_is_counted_with_its_reason(tmp_path: Path) -> None:
    url = upload_image(tmp_path / "ls", "00000001-b.png", np.zeros((60, 80, 3), np.uint8))
    good = brush_result(np.pad(np.ones((10, 10), bool), ((5, 45), (5, 65))), "cat", "good")
    truncated = dict(good, id="truncated", value={**good["value"], "rle": good["value"]["rle"][:20]})
    wrong_size = dict(good, id="wrong_size", original_width=40, original_height=120)
    empty = brush_result(np.zeros((60, 80), bool), "cat", "empty")
    no_size = {k: v for k, v in rectangle_result((1, 1, 5, 5), "cat", 80, 60).items() if not k.startswith("original")}
    results = [good, truncated, wrong_size, empty,
               result("keypointlabels", {"x": 5, "y": 5, "width": 1, "keypointlabels": ["cat"]}, 80, 60, "kp"),
               result("ellipselabels", {"x": 5, "y": 5, "radiusX": 2, "radiusY": 2, "ellipselabels": ["cat"]}, 80, 60, "el"),
               result("polygonlabels", {"points": [[1, 1], [2, 2]], "polygonlabels": ["cat"]}, 80, 60, "line"),
               result("rectanglelabels", {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": []}, 80, 60, "nolabel"),
               result("rectanglelabels", {"x": "1", "y": 1, "width": 1e308, "height": 5, "rectanglelabels": ["cat"]}, 80, 60, "str"),
               result("polygonlabels", {"points": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "polygonlabels": ["cat"]}, 80, 60, "3d"),
               result("rectanglelabels", {"x": 1e308, "y": 1, "width": 1e308, "height": 5, "rectanglelabels": ["cat"]}, 80, 60, "inf"),
               result("choices", {"choices": ["outdoor"]}, None, None, "choice")]
    (tmp_path / "ls" / "media" / "upload" / "3" / "00000002-garbage.png").write_bytes(b"not an image")
    tasks = [task(1, url, [annotation(results)]),
             task(2, "/data/upload/3/ffffffff-gone.png", [annotation([no_size])]),
             task(3, "/data/upload/3/00000002-garbage.png", [annotation([no_size])])]
    export = write_export(tmp_path / "e.json", tasks)

    coco_dict, summary = run(export, tmp_path / "out", tmp_path / "ls")

    assert len(coco_dict["annotations"]) == 1
    assert summary.regions_skipped == {"bad RLE": 1, "brush size differs from the image size": 1, "empty": 2,
                                       "keypoints (not converted)": 1, "unsupported region type ellipselabels": 1,
                                       "no label": 1, "malformed value": 3}
    assert summary.ignored_results == {"choices": 1}
    assert summary.tasks_skipped == {"image not found on disk": 1, "missing size": 1}
    assert summary.image_problems == {"unreadable image": 1}
    report = summary.report()
    assert "bad RLE: 1" in report and "image not found on disk: 1" in report
    assert "task 2 skipped: image not found on disk (not in " in report and "task 3: image 00000002-garbage.png is unreadable" in report


def test_images_are_found_by_original_name_or_downloaded_with_an_api_key(tmp_path: Path) -> None:
    originals = tmp_path / "my_photos"
    originals.mkdir()
    pixels = np.full((40, 50, 3), 200, np.uint8)
    upload_image(tmp_path / "elsewhere", "0badf00d-local.png", pixels)
    (tmp_path / "elsewhere" / "media" / "upload" / "3" / "0badf00d-local.png").rename(originals / "local.png")
    served = upload_image(tmp_path / "served", "abcdef12-remote.png", pixels)
    remote_bytes = (tmp_path / "served" / "media" / "upload" / "3" / "abcdef12-remote.png").read_bytes()
    box = [rectangle_result((1, 1, 9, 9), "cat", 50, 40)]
    export = write_export(tmp_path / "e.json", [task(1, "/data/upload/3/0badf00d-local.png", [annotation(box)]),
                                                task(2, served, [annotation(box)])])

    with FakeLabelStudio({"upload/3/abcdef12-remote.png": remote_bytes}, "secret") as fake:
        sources = ImageSources(tmp_path / "empty", image_root=originals, ls_url=fake.url, api_key="secret", timeout=5,
                               downloader=ExportDownloader)
        coco_dict, summary = run(export, tmp_path / "out", tmp_path / "empty", sources=sources)

    assert summary.images == {"copied": 1, "downloaded": 1}
    assert [i["file_name"] for i in coco_dict["images"]] == ["0badf00d-local.png", "abcdef12-remote.png"]
    assert (tmp_path / "out" / "images" / "abcdef12-remote.png").read_bytes() == remote_bytes
    assert not list((tmp_path / "out").glob(".staging-*"))


def test_malformed_json_is_a_clear_error_and_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ls_dir = tmp_path / "ls"
    tasks = [t for t, _ in shapes_tasks(ls_dir, range(3))]
    text = json.dumps(tasks)
    broken = tmp_path / "broken.json"
    broken.write_text(text[: int(len(text) * 0.8)])  # the first tasks parse, then the file ends
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")

    fresh_code = main(["--json_file_path", str(broken), "--out_dir", str(tmp_path / "fresh"), "--ls_data_dir", str(ls_dir)])
    existing_code = main(["--json_file_path", str(broken), "--out_dir", str(existing), "--ls_data_dir", str(ls_dir)])
    not_tasks = write_export(tmp_path / "numbers.json", [1, 2])  # type: ignore[list-item]
    with pytest.raises(ConversionError, match="not a task object"):
        convert(ConvertOptions(not_tasks, tmp_path / "n", sources=ImageSources(ls_dir)))

    assert fresh_code == existing_code == 1
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "n").exists()
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_single_task_object_and_strict_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ls_dir = tmp_path / "ls"
    (single, _), = shapes_tasks(ls_dir, range(5, 6))
    export = tmp_path / "one.json"
    export.write_text(json.dumps(single))
    missing = write_export(tmp_path / "missing.json", [dict(single, data={"image": "/data/upload/3/00000000-nope.png"})])
    args = ["--out_dir", str(tmp_path / "out"), "--ls_data_dir", str(ls_dir), "--strict"]

    assert main(["--json_file_path", str(export), *args]) == 0
    assert main(["--json_file_path", str(missing), *args]) == 3
    output = capsys.readouterr()
    assert "image not found on disk: 1" in output.out and "--strict" in output.err
    assert main(["--json_file_path", str(missing), *args[:-1]]) == 0


def test_tasks_whose_image_could_not_be_copied_are_left_out_of_the_coco_file(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    ls_dir = tmp_path / "ls"
    present = [t for t, _ in shapes_tasks(ls_dir, range(7, 9))]
    gone = [dict(present[0], id=90, data={"image": "/data/upload/3/0000dead-gone.png"}),
            dict(present[1], id=91, data={"image": "https://127.0.0.1:9/unreachable.png"})]
    export = write_export(tmp_path / "e.json", [gone[0], present[0], gone[1], present[1]])

    coco_dict, summary = run(export, tmp_path / "out", ls_dir, sources=ImageSources(ls_dir, timeout=2, downloader=ExportDownloader))

    assert [image["ls_task_id"] for image in coco_dict["images"]] == [7, 8]
    assert all((tmp_path / "out" / "images" / image["file_name"]).is_file() for image in coco_dict["images"])
    assert {a["image_id"] for a in coco_dict["annotations"]} == {1, 2}
    assert summary.tasks_skipped == {"image not found on disk": 1, "image download failed": 1}
    assert summary.images == {"copied": 2, "missing": 2}
    report = summary.report()
    assert "tasks skipped: 2 (image not found on disk: 1, image download failed: 1)" in report
    assert "task 91 skipped: image download failed (" in report
    args = ["--json_file_path", str(export), "--out_dir", str(tmp_path / "strict"), "--ls_data_dir", str(ls_dir), "--timeout", "2"]
    assert main([*args, "--strict"]) == 3
    assert json.loads((tmp_path / "strict" / "annotations" / "ann.json").read_text())["images"] == coco_dict["images"]
    assert "--strict" in capsys.readouterr().err


def test_without_a_downloader_nothing_is_downloaded(tmp_path: Path) -> None:
    """formats never reaches the network: an image not on disk is missing unless the caller gives a downloader."""
    with FakeLabelStudio({"upload/3/abcdef12-remote.png": b"never fetched"}, "secret") as fake:
        export = write_export(tmp_path / "e.json", [task(1, f"{fake.url}/data/upload/3/abcdef12-remote.png",
                                                         [annotation([rectangle_result((1, 1, 9, 9), "cat", 50, 40)])])])
        sources = ImageSources(tmp_path / "empty", ls_url=fake.url, api_key="secret", timeout=5)
        _, summary = run(export, tmp_path / "out", tmp_path / "empty", sources=sources)

    assert summary.images == {"missing": 1} and summary.tasks_skipped == {"image not found on disk": 1}
    assert "not on disk, and this conversion downloads nothing" in summary.report()


def test_label_studio_default_folders_and_unique_image_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from formats.export_images import default_local_files_root, default_ls_data_dir

    for name in ("LABEL_STUDIO_BASE_DATA_DIR", "HEARTEX_BASE_DATA_DIR", "BASE_DATA_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path / "storage"))
    assert default_ls_data_dir() == tmp_path / "home" / ".local" / "share" / "label-studio"

    pixels = np.zeros((30, 40, 3), np.uint8)
    for folder in ("a", "b"):
        (tmp_path / "storage" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "storage" / folder / "x.png"), pixels)
    upload_image(default_ls_data_dir(), "x.png", pixels)
    box = [rectangle_result((1, 1, 9, 9), "cat", 40, 30)]
    urls = ["/data/local-files/?d=a/x.png", "/data/local-files/?d=b%2Fx.png", "/data/upload/3/x.png",
            "/data/upload/3/x.png", str(tmp_path / "storage" / "a" / "x.png")]
    export = write_export(tmp_path / "e.json", [task(i, url, [annotation(box)]) for i, url in enumerate(urls, 1)])

    coco_dict, summary = run(export, tmp_path / "out", default_ls_data_dir(),
                             sources=ImageSources(default_ls_data_dir(), default_local_files_root()))

    assert [i["file_name"] for i in coco_dict["images"]] == ["a/x.png", "b/x.png", "x.png", "x.png", "x-task5.png"]
    assert summary.images == {"copied": 4, "shared": 1}
    assert all((tmp_path / "out" / "images" / i["file_name"]).is_file() for i in coco_dict["images"])
