"""Resuming: a changed config's optimizer settings and schedule apply from the first resumed update; a kill
between checkpoint renames loses no numbered checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_training import make_trainer

from transcoder.training.optim import warmup_cosine_factor
from transcoder.utils.checkpoint import load_checkpoint


def test_changed_optimizer_settings_and_schedule_apply_from_the_first_resumed_update(tmp_path: Path) -> None:
    make_trainer(tmp_path, "training.max_steps=6", "optimizer.warmup_steps=2").fit(stop_at_step=3)
    new = ("training.max_steps=9", "optimizer.warmup_steps=2", "optimizer.lr=0.01", "optimizer.weight_decay=0.5",
           "optimizer.betas=[0.8,0.9]", "optimizer.eps=1e-6", "optimizer.min_lr_ratio=0.1", "training.log_every=1")
    trainer = make_trainer(tmp_path, *new, allow_config_change=True)
    part = trainer.parts["model"]
    assert part.updates == 3 and part.scheduler.base_lrs == [0.01, 0.01]

    def lr(updates: int) -> float:  # the new config's schedule
        return 0.01 * warmup_cosine_factor(updates, 2, 9, 0.1)

    decayed, not_decayed = part.optimizer.param_groups
    assert decayed["lr"] == not_decayed["lr"] == pytest.approx(lr(3), rel=1e-12)
    assert (decayed["weight_decay"], not_decayed["weight_decay"]) == (0.5, 0.0)
    assert decayed["betas"] == (0.8, 0.9) and decayed["eps"] == 1e-6 and decayed["initial_lr"] == 0.01
    assert len(part.optimizer.state) > 0  # the Adam moments carry over
    trainer.fit()
    logged = [entry["train/lr"] for entry in trainer.history]  # the lr after each resumed update
    assert logged == pytest.approx([lr(k) for k in range(4, 10)], rel=1e-9)
    saved = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert saved["config"]["optimizer"]["lr"] == 0.01
    assert saved["optim"]["model"]["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    assert "with a changed config (optimizer.betas" in (tmp_path / "train.log").read_text()


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs in the killed save."""


def test_kill_between_latest_and_numbered_checkpoint_loses_no_numbered_checkpoint(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from transcoder.training import trainer as trainer_module

    real_save = trainer_module.save_atomic

    def killed_after_latest_of_step_4(state: dict, path: Path) -> Path:
        written = real_save(state, path)
        if Path(path).name == "latest.pt" and state["step"] == 4:
            raise _Killed
        return written

    common = ("training.max_steps=6", "training.ckpt_every=2")
    monkeypatch.setattr(trainer_module, "save_atomic", killed_after_latest_of_step_4)
    with pytest.raises(_Killed):
        make_trainer(tmp_path, *common).fit()
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("step_*.pt")) == ["step_0000002.pt"]
    monkeypatch.setattr(trainer_module, "save_atomic", real_save)
    resumed = make_trainer(tmp_path, *common)
    assert resumed.state.step == 4
    resumed.fit()
    assert sorted(p.name for p in ckpt_dir.glob("step_*.pt")) == [f"step_000000{n}.pt" for n in (2, 4, 6)]
    step_4, latest = load_checkpoint(ckpt_dir / "step_0000004.pt"), load_checkpoint(ckpt_dir / "latest.pt")
    assert step_4["step"] == 4 and latest["step"] == 6
    assert "step_0000004.pt was missing" in (tmp_path / "train.log").read_text()
