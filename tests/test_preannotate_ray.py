"""tools.preannotate --ray on a local Ray against the stand-in Label Studio API: the same
predictions as the single-process job, bounded concurrent imports, a killed actor replaced
without losing or duplicating tasks, and broken images reported."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import local_url
from tests.fake_label_studio_api import FakeLabelStudioAPI
from tests.test_preannotate import CONFIG, N_TASKS, assert_same_regions, job_options, shapes_data, stored  # noqa: F401 - fixture
from tools.preannotate.job import JobOptions, run_local
from tools.preannotate.predicting import Outcome
from tools.preannotate.ray_job import RayOptions, run_on_ray

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_gives_the_single_process_predictions_with_bounded_imports(job_options: Callable[..., JobOptions]) -> None:
    with FakeLabelStudioAPI(CONFIG, N_TASKS, shapes_data) as single, FakeLabelStudioAPI(CONFIG, N_TASKS, shapes_data) as on_ray:
        run_local(job_options(single))
        on_ray.faults.update({"tasks": [0, 0, 500], "import": [429, 500]})
        summary = run_on_ray(job_options(on_ray), RayOptions(actors=2, max_inflight=1))
        again = run_on_ray(job_options(on_ray), RayOptions(actors=1))

    assert summary.ok and (summary.predicted, summary.workers) == (N_TASKS, 2)
    assert on_ray.max_concurrent_imports == 1
    single_predictions, ray_predictions = stored(single), stored(on_ray)
    assert sorted(ray_predictions) == sorted(single_predictions) == list(on_ray.task_ids())
    for task_id, (prediction,) in ray_predictions.items():
        (expected,) = single_predictions[task_id]
        assert prediction["model_version"] == expected["model_version"] == summary.model_version
        assert_same_regions(prediction["result"], expected["result"])
    assert (again.skipped, again.predicted) == (N_TASKS, 0)


def test_a_killed_actor_is_replaced_and_no_task_is_lost_or_duplicated(job_options: Callable[..., JobOptions],
                                                                      image_root: Path) -> None:
    (image_root / "broken-ray.png").write_bytes(b"not a png")
    killed: list[int] = []

    def kill_one_actor(outcome: Outcome, worker: int) -> None:
        if not killed and worker != os.getpid():
            killed.append(worker)
            os.kill(worker, signal.SIGKILL)

    data = lambda i: {"image": local_url("broken-ray.png")} if i == 17 else shapes_data(i)  # noqa: E731
    with FakeLabelStudioAPI(CONFIG, 40, data) as fake:
        summary = run_on_ray(job_options(fake), RayOptions(actors=2), on_outcome=kill_one_actor)
        predictions = stored(fake)

    assert killed and not summary.aborted
    assert summary.predicted + summary.n_failed + summary.skipped >= 40
    assert summary.failed == {"image cannot be read": 1}
    assert sorted(predictions) == [task_id for task_id in fake.task_ids() if task_id != 1018]
    assert all(len(p) == 1 for p in predictions.values())
