"""Full disks, unwritable places and damaged checkpoints: one line, no partial file, no run left RUNNING
(issue #16, items 8 and 9)."""

from __future__ import annotations

import errno
import signal

import mlflow
import pytest

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.training import checkpoint_io
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

RUN = ["data=synthetic", "data.rows=3000", "data.batch_size=256", "model=mlp", "trainer.max_epochs=4", "seed=5",
       "callbacks.early_stopping.patience=10"]
KILL = ["+callbacks.kill._target_=m3oe_lightning.training.callbacks.KillAtEpoch", "+callbacks.kill.epoch=2"]


def test_a_full_disk_leaves_neither_a_partial_file_nor_a_changed_one(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous, whole")

    def fill_up(handle):
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserInputError, match=r"cannot write .*last\.ckpt: No space left on device"):
        checkpoint_io.write_whole(target, fill_up, keep_previous=True)
    assert target.read_bytes() == b"previous, whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_damaged_checkpoint_falls_back_to_the_kept_previous_one(tmp_path, capsys):
    import torch

    last = tmp_path / "last.ckpt"
    checkpoint_io.write_whole(last, lambda h: torch.save({"epoch": 0}, h), keep_previous=True)
    checkpoint_io.write_whole(last, lambda h: torch.save({"epoch": 1}, h), keep_previous=True)
    assert torch.load(tmp_path / "last.ckpt.prev", weights_only=True) == {"epoch": 0}
    assert checkpoint_io.usable(last) == last
    last.write_bytes(last.read_bytes()[:100])  # truncated
    assert checkpoint_io.usable(last) == tmp_path / "last.ckpt.prev"
    assert "damaged" in capsys.readouterr().out
    (tmp_path / "last.ckpt.prev").write_bytes(b"")
    with pytest.raises(UserInputError, match="damaged .* no previous version"):
        checkpoint_io.usable(last)


def runs(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")


@pytest.mark.slow
def test_resume_over_a_truncated_last_checkpoint(tmp_path):
    work = isolated(tmp_path)
    seeded_store(tmp_path)
    killed = run_module("m3oe_lightning.train", [*RUN, *work, *KILL], cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL
    (run,) = runs(tmp_path)
    last = tmp_path / "logs" / "checkpoints" / run.info.run_id / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    resumed = run_module("m3oe_lightning.train", [*RUN, *work, "resume=true"], cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "is damaged" in resumed.stdout and "last.ckpt.prev" in resumed.stdout
    (final,) = runs(tmp_path)
    assert final.info.run_id == run.info.run_id and final.info.status == "FINISHED"


@pytest.mark.bad_input
@pytest.mark.parametrize("setting", ["paths.checkpoint_dir", "logger.tracking_uri"])
def test_an_unwritable_place_is_one_line_and_no_run_stays_running(tmp_path, setting):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    value = f"sqlite:///{blocker}/mlflow.db" if setting == "logger.tracking_uri" else str(blocker / "ckpt")
    result = run_module("m3oe_lightning.train", [*isolated(tmp_path), *RUN, "trainer.max_epochs=1",
                                                 f"{setting}={value}"], cwd=REPO_ROOT, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert str(blocker) in line and "Traceback" not in result.stderr
    if setting == "paths.checkpoint_dir" and (tmp_path / "mlflow.db").exists():
        assert all(r.info.status != "RUNNING" for r in runs(tmp_path))
