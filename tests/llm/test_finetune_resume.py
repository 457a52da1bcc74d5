"""Which Trainer checkpoint an interrupted fine-tuning resumes from (folders only, no model)."""

from __future__ import annotations

from pathlib import Path

from dealrec.core.files import read_json, write_json
from dealrec.llm.resume import RUN_FILE, ResumePoint, complete_checkpoints, resume_point


def checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    c = folder / f"checkpoint-{step}"
    c.mkdir(parents=True)
    (c / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        write_json(c / "trainer_state.json", {"global_step": step})
    return c


def test_complete_checkpoints_need_their_trainer_state(tmp_path):
    checkpoint(tmp_path, 8)
    checkpoint(tmp_path, 16)
    checkpoint(tmp_path, 24, complete=False)
    (tmp_path / "checkpoint-32").mkdir()
    (tmp_path / "checkpoint-32" / "trainer_state.json").write_text('{"global_st')  # cut short
    checkpoint(tmp_path, 40).joinpath("trainer_state.json").write_text('{"global_step": 39}')
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-16"]
    assert complete_checkpoints(tmp_path / "missing") == []


def test_same_key_resumes_from_the_latest_complete_checkpoint(tmp_path):
    write_json(tmp_path / RUN_FILE, {"key": "k1", "seconds": {"8": 10.0, "16": 21.5}})
    checkpoint(tmp_path, 8)
    c16 = checkpoint(tmp_path, 16)
    checkpoint(tmp_path, 24, complete=False)
    # another process decides the same without deleting anything
    assert resume_point(tmp_path, "k1", overwrite=False, main=False) == ResumePoint(str(c16), 16, 21.5)
    assert (tmp_path / "checkpoint-24").is_dir()
    assert resume_point(tmp_path, "k1", overwrite=False, main=True) == ResumePoint(str(c16), 16, 21.5)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]


def test_other_key_or_overwrite_starts_afresh(tmp_path):
    for key, overwrite in (("k2", False), ("k1", True)):
        write_json(tmp_path / RUN_FILE, {"key": "k1", "seconds": {"8": 10.0}})
        checkpoint(tmp_path, 8)
        assert resume_point(tmp_path, key, overwrite=overwrite, main=False) == ResumePoint(None)
        assert (tmp_path / "checkpoint-8").is_dir()
        assert resume_point(tmp_path, key, overwrite=overwrite, main=True) == ResumePoint(None)
        assert not list(tmp_path.glob("checkpoint-*"))
        assert read_json(tmp_path / RUN_FILE) == {"key": key, "seconds": {}}


def test_no_run_file_or_no_complete_checkpoint_starts_afresh(tmp_path):
    checkpoint(tmp_path, 8)  # a run file never written: checkpoints of unknown settings
    assert resume_point(tmp_path, "k1", overwrite=False, main=True) == ResumePoint(None)
    assert not list(tmp_path.glob("checkpoint-*"))
    checkpoint(tmp_path, 8, complete=False)
    assert resume_point(tmp_path, "k1", overwrite=False, main=True) == ResumePoint(None)
    assert not list(tmp_path.glob("checkpoint-*"))
    fresh = tmp_path / "new" / "checkpoints"
    assert resume_point(fresh, "k1", overwrite=False, main=True) == ResumePoint(None)
    assert read_json(fresh / RUN_FILE)["key"] == "k1"
