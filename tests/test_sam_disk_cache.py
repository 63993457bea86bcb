"""SAM_DISK_CACHE_MAX_GB: the disk embedding cache stays under its size, least recently used first,
with several worker processes writing into it."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from backend.models.lru_folder import prune
from backend.models.sam_embeddings import DiskEmbeddings, ImageEmbedding
from backend.settings import Settings, SettingsError


def embedding(seed: int) -> ImageEmbedding:
    generator = torch.Generator().manual_seed(seed)
    return ImageEmbedding(torch.randn(1, 8, 32, 32, generator=generator), (), (160, 120), (320, 240))


def entry_bytes(tmp_path: Path) -> int:
    probe = DiskEmbeddings(tmp_path / "probe", "m")
    probe.save("k", embedding(0))
    return (probe.directory / "k.pt").stat().st_size


def stored(disk: DiskEmbeddings) -> set[str]:
    return {path.stem for path in disk.directory.glob("*.pt")}


def age(path: Path, seconds_ago: float) -> None:
    moment = time.time() - seconds_ago
    os.utime(path, (moment, moment))


def test_the_least_recently_used_embedding_goes_first(tmp_path: Path) -> None:
    size = entry_bytes(tmp_path)
    disk = DiskEmbeddings(tmp_path / "cache", "model", max_bytes=2 * size + size // 2)  # room for two
    disk.save("a", embedding(1))
    disk.save("b", embedding(2))
    age(disk.directory / "a.pt", 30)
    age(disk.directory / "b.pt", 20)
    assert disk.load("a", torch.device("cpu")) is not None  # a click: "a" is now the most recently used
    disk.save("c", embedding(3))
    assert stored(disk) == {"a", "c"}
    loaded = disk.load("c", torch.device("cpu"))
    assert torch.allclose(loaded.features, embedding(3).features, atol=1e-2)  # fp16 on disk


def test_the_limit_covers_every_model_in_the_directory(tmp_path: Path) -> None:
    size = entry_bytes(tmp_path)
    old_model = DiskEmbeddings(tmp_path / "cache", "old-model")
    for key in ("x", "y"):
        old_model.save(key, embedding(4))
        age(old_model.directory / f"{key}.pt", 3600)
    current = DiskEmbeddings(tmp_path / "cache", "current-model", max_bytes=2 * size + size // 2)
    current.save("a", embedding(5))
    current.save("b", embedding(6))
    assert stored(old_model) == set() and stored(current) == {"a", "b"}


def test_no_limit_keeps_everything_and_a_pruned_file_is_a_quiet_miss(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    disk = DiskEmbeddings(tmp_path / "cache", "model", max_bytes=0)
    for index in range(5):
        disk.save(f"k{index}", embedding(index))
    assert len(stored(disk)) == 5
    (disk.directory / "k0.pt").unlink()  # as another worker's pruning would
    assert disk.load("k0", torch.device("cpu")) is None
    assert not caplog.records


def test_temporary_files_of_dead_writers_are_removed_once_stale(tmp_path: Path) -> None:
    disk = DiskEmbeddings(tmp_path / "cache", "model", max_bytes=10**9)
    stale, fresh = disk.directory / ".k.1.tmp", disk.directory / ".k.2.tmp"
    stale.write_bytes(b"half written")
    fresh.write_bytes(b"being written")
    age(stale, 2 * 3600)
    disk.save("k", embedding(7))
    assert not stale.exists() and fresh.exists()


def test_a_worker_finding_the_prune_lock_taken_leaves_the_pruning_to_its_holder(tmp_path: Path) -> None:
    size = entry_bytes(tmp_path)
    disk = DiskEmbeddings(tmp_path / "cache", "model")
    for index in range(3):
        disk.save(f"k{index}", embedding(index))
    with (tmp_path / "cache" / ".prune.lock").open("a") as other_worker:
        fcntl.flock(other_worker, fcntl.LOCK_EX)
        started = time.monotonic()
        assert prune(tmp_path / "cache", size, "SAM embedding cache", ".pt", depth=1) == 0
        assert time.monotonic() - started < 1, "must not wait for the other worker"
    assert prune(tmp_path / "cache", size, "SAM embedding cache", ".pt", depth=1) == 2 and len(stored(disk)) == 1


def _write_many(root: str, worker: int, max_bytes: int) -> None:
    disk = DiskEmbeddings(Path(root), "model", max_bytes=max_bytes)
    for index in range(12):
        disk.save(f"w{worker}-{index}", embedding(worker * 100 + index))
        disk.load(f"w{(worker + 1) % 4}-{index}", torch.device("cpu"))  # read what another worker may prune


def test_several_worker_processes_stay_under_the_limit(tmp_path: Path) -> None:
    size = entry_bytes(tmp_path)
    limit = 10 * size + size // 2
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(tmp_path / "cache"), k, limit)) for k in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [process.exitcode for process in workers] == [0, 0, 0, 0]
    files = list((tmp_path / "cache" / "model").iterdir())
    assert all(path.suffix == ".pt" for path in files), "no temporary file left behind"
    # a writer whose prune found the lock taken may add one file after the holder's scan
    assert sum(path.stat().st_size for path in files) <= limit + 3 * size
    disk = DiskEmbeddings(tmp_path / "cache", "model")
    assert all(disk.load(path.stem, torch.device("cpu")) is not None for path in files), "every kept file is whole"


def test_the_setting_refuses_a_negative_size() -> None:
    assert Settings.load({"sam_disk_cache_max_gb": "2.5"}, environ={}).sam_disk_cache_max_gb == 2.5
    with pytest.raises(SettingsError, match="SAM_DISK_CACHE_MAX_GB must not be negative"):
        Settings.load({"sam_disk_cache_max_gb": "-1"}, environ={})
    with pytest.raises(SettingsError, match="IMAGE_CACHE_MAX_GB must not be negative"):
        Settings.load({"image_cache_max_gb": "-0.5"}, environ={})
