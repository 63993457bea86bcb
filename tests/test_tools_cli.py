"""OpenMMLab's command line for convert_to_rle_mask_coco: as a script, a module and the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from tests.tools_exports import shapes_tasks, write_export

REPO_ROOT = Path(__file__).resolve().parent.parent


def console_script_target() -> str:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts["convert_to_rle_mask_coco"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    tasks = [t for t, _ in shapes_tasks(root / "ls", range(20, 23), kinds=("brush", "rectangle"))]
    return write_export(root / "export.json", tasks), root / "ls"


def run_cli(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_openmmlab_command_line_works_as_script_module_and_console_script(export: tuple[Path, Path], tmp_path: Path) -> None:
    export_path, ls_dir = export
    # Label Studio's data dir comes from the environment, as for Label Studio itself.
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(ls_dir)}
    env.pop("PYTHONPATH", None)
    module_name, function = console_script_target().split(":")
    entry_point = f"import sys, importlib; sys.exit(importlib.import_module('{module_name}').{function}())"
    forms = {
        "script": [sys.executable, str(REPO_ROOT / "tools" / "convert_to_rle_mask_coco.py")],
        "module": [sys.executable, "-m", "tools.convert_to_rle_mask_coco"],
        "entry point": [sys.executable, "-c", entry_point],
    }
    installed = shutil.which("convert_to_rle_mask_coco")
    if installed:
        forms["console script"] = [installed]
    for form, command in forms.items():
        out_dir = tmp_path / form.replace(" ", "_")
        cwd = tmp_path if form == "script" else REPO_ROOT  # the script finds the repository on its own
        done = run_cli(command + ["--json_file_path", str(export_path), "--out_dir", str(out_dir),
                                  "--out_config", "rtmdet-ins_s"], cwd, env)
        assert done.returncode == 0, (form, done.stderr)
        coco = COCO(str(out_dir / "annotations" / "ann.json"))
        # The category list is printed last, as OpenMMLab's script does, for pasting into a config.
        assert done.stdout.strip().splitlines()[-1] == str([c["name"] for c in coco.dataset["categories"]])
        assert len(coco.imgs) == 3 and len(list((out_dir / "images").iterdir())) == 3
        assert (out_dir / "rtmdet-ins_s.py").is_file()


def test_out_config_is_an_mmdetection_config_for_the_dataset(export: tuple[Path, Path], tmp_path: Path) -> None:
    from tools.convert_to_rle_mask_coco import main

    export_path, ls_dir = export
    out_dir = tmp_path / "my_set"
    assert main(["--json_file_path", str(export_path), "--out_dir", str(out_dir), "--ls_data_dir", str(ls_dir),
                 "--classes", "triangle,circle", "square", "--out_config", "mask-rcnn_r50_fpn"]) == 0

    namespace: dict = {}
    exec((out_dir / "mask-rcnn_r50_fpn.py").read_text(), namespace)  # noqa: S102 - our own generated config
    assert namespace["_base_"] == "mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"
    assert namespace["class_name"] == ("triangle", "circle", "square")
    assert namespace["model"]["roi_head"]["mask_head"]["num_classes"] == 3
    dataset = namespace["train_dataloader"]["dataset"]
    assert Path(dataset["data_root"], dataset["ann_file"]).is_file()
    assert Path(dataset["data_root"], dataset["data_prefix"]["img"]).is_dir()
    categories = json.loads(Path(dataset["data_root"], dataset["ann_file"]).read_text())["categories"]
    assert [c["name"] for c in categories] == list(namespace["class_name"])


def test_user_errors_are_one_line_messages_not_tracebacks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "data": ')
    env = {**os.environ}
    for args, message in (([str(bad)], "is not valid JSON"), ([str(tmp_path / "absent.json")], "does not exist")):
        done = run_cli([sys.executable, "-m", "tools.convert_to_rle_mask_coco", "--json_file_path", *args,
                        "--out_dir", str(tmp_path / "out")], REPO_ROOT, env)
        assert done.returncode == 1
        assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
