"""dr_core.runtime: atomic writes, the worker count and the logging set-up."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from dr_core.runtime.io import write_atomic
from dr_core.runtime.lock import FolderLocked, exclusive_folder
from dr_core.runtime.logs import setup_logging
from dr_core.runtime.workers import resolve_workers, usable_cores


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    seen = []
    write_atomic(target, lambda p: seen.append(p) or p.write_text("new"))
    assert target.read_text() == "new"
    assert seen[0].parent == tmp_path and seen[0].name.startswith("out.json.") and seen[0].suffix == ".tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_atomic_gives_new_files_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    write_atomic(tmp_path / "a.txt", lambda p: p.write_text("x"))
    (tmp_path / "b.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode)


def test_write_atomic_keeps_the_old_file_and_removes_the_temporary_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def fail(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "shared.txt"
    names, barrier = [], threading.Barrier(2)

    def write(p, text):
        names.append(p.name)
        barrier.wait(timeout=10)  # both temporaries exist at once
        p.write_text(text)

    threads = [threading.Thread(target=write_atomic, args=(target, lambda p, t=t: write(p, t))) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 2 and target.read_text() in ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.txt"]


def test_zero_workers_means_every_usable_core():
    assert resolve_workers(0) == usable_cores() >= 1
    assert resolve_workers(0, 1) == 1 and resolve_workers(5) == 5


def test_setup_logging_shows_info_records_with_the_logger_name(capfd):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []  # the set-up leaves a root logger that has handlers alone
    try:
        setup_logging()
        logging.getLogger("dr_core.example").info("%d photos", 3)
        assert "INFO dr_core.example: 3 photos" in capfd.readouterr().err
    finally:
        root.handlers, root.level = saved[0], saved[1]


HOLD_LOCK = """import sys, time
from pathlib import Path
from dr_core.runtime.lock import exclusive_folder
with exclusive_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (as a training would), once this returns."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_of_a_locked_folder_stops_at_once_naming_the_holder(tmp_path):
    folder = tmp_path / "models"
    holder = hold_lock(folder)
    try:
        start = time.monotonic()
        with pytest.raises(FolderLocked, match=rf"models: another training is writing here \(process {holder.pid} "
                                               rf"holds .*/models/\.lock\).*`kill {holder.pid}`.*dvc exp run --queue"):
            with exclusive_folder(folder):
                pass
        assert time.monotonic() - start < 5  # no waiting
    finally:
        holder.kill()  # kill -9: the kernel releases its lock
        holder.wait()
    with exclusive_folder(folder) as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert lock.read_text() == ""  # released: the next holder writes its own PID


def test_progress_off_a_terminal_logs_a_few_lines_not_a_redraw_per_item(caplog, monkeypatch) -> None:
    """In a log file or a dvc queue worker, 1,000 items give about ten lines, each with the count."""
    import io
    import logging

    from dr_core.runtime.progress import LoggedProgress, progress

    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    with caplog.at_level(logging.INFO, logger="dr_core.progress"):
        bar = progress(range(1000), desc="checking images", unit="img")
        assert isinstance(bar, LoggedProgress)
        assert sum(1 for _ in bar) == 1000
    lines = [r.getMessage() for r in caplog.records if r.name == "dr_core.progress"]
    assert 5 <= len(lines) <= 11, lines
    assert lines[-1].startswith("checking images: 1000/1000 img (100%)")
    with progress(total=4, desc="demo images") as manual:
        for _ in range(4):
            manual.update()
    assert caplog.records[-1].getMessage().startswith("demo images: 4/4")


@pytest.mark.parametrize("error, code", [("config", 2), ("data", 1), ("checkpoint", 1), ("cache", 1)])
def test_a_stage_turns_input_errors_into_one_line(error, code, capsys):
    """stages.run: an error the user can fix is `error: <message>` on stderr and an exit code, no traceback."""
    from dr_core.config import ConfigError
    from dr_core.data.cache import CacheBuildError
    from dr_core.data.ingest import DataError
    from dr_core.models.checkpoint import CheckpointError
    from stages import run

    kinds = {"config": ConfigError, "data": DataError, "checkpoint": CheckpointError, "cache": CacheBuildError}

    def main():
        raise kinds[error]("labels.csv: line 3: grade 7; grades are 0-4")

    with pytest.raises(SystemExit) as exit_:
        run(main)
    assert exit_.value.code == code
    assert capsys.readouterr().err == "error: labels.csv: line 3: grade 7; grades are 0-4\n"
