"""Every bad config value: ``error: <one line naming the key>`` on stderr, exit code 2, no traceback,
and no run folder (the checks run before the Trainer creates it). Runs ``main()`` in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
AC = "model.params.audioconfig"

_spec = importlib.util.spec_from_file_location("main_audio_tokenizer", REPO / "scripts" / "main_audio_tokenizer.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

BASE = [f"data.train.params.root={DATA_ROOT}", f"data.val.params.root={DATA_ROOT}", "data.num_workers=0"]

# (id, overrides, substrings the one error line must contain); "{tmp}" is replaced by a scratch folder.
CASES = [
    ("unknown-model-key", ["model.params.embed_dims=18"], ["AudioBSQModel", "embed_dims"]),
    ("unknown-audioconfig-key", [f"{AC}.widht=64"], ["unknown audioconfig key(s) ['widht']"]),
    ("unknown-loss-key", ["loss.params.l3_weight=1"], ["AudioTokenizerLoss", "l3_weight"]),
    ("unknown-specaugment-key", ["data.specaugment.time_mask=1"], ["['time_mask'] in data.specaugment"]),
    ("specaugment-negative", ["data.specaugment.freq_width=-1"], ["data.specaugment.freq_width=-1"]),
    ("patch-not-dividing", [f"{AC}.patch_size=[7,8]"], ["input_length=128", "time patch 7"]),
    ("embed-dim-zero", ["model.params.embed_dim=0"], ["embed_dim=0: expected 1..62"]),
    ("embed-dim-negative", ["model.params.embed_dim=-1"], ["embed_dim=-1: expected 1..62"]),
    ("embed-dim-too-big", ["model.params.embed_dim=100"], ["embed_dim=100: expected 1..62"]),
    ("group-size", ["model.params.group_size=7"], ["group_size (got 7)"]),
    ("group-size-type", ["model.params.group_size=abc"], ["group_size='abc'"]),
    ("heads-zero", [f"{AC}.heads=0"], ["audioconfig.heads=0: expected a positive integer"]),
    ("heads-not-dividing", [f"{AC}.heads=3"], ["width=128 is not divisible by heads=3"]),
    ("layers-zero", [f"{AC}.layers=0"], ["audioconfig.layers=0"]),
    ("kernel-even", [f"{AC}.conv_kernel_size=4"], ["conv_kernel_size=4: expected a positive odd number"]),
    ("width-negative", [f"{AC}.width=-64"], ["audioconfig.width=-64: expected a positive integer"]),
    ("mlp-ratio-negative", [f"{AC}.mlp_ratio=-1"], ["audioconfig.mlp_ratio=-1"]),
    ("mel-hop-zero", ["data.hop_length=0"], ["data.hop_length=0"]),
    ("mel-fmax", ["data.f_max=100000"], ["f_max=100000"]),
    ("input-size-mismatch", ["data.n_mels=80", "model.params.audioconfig.input_size=64"],
     ["audioconfig.input_size=64 but data.n_mels=80"]),
    ("missing-root", ["data.train.params.root={tmp}/nowhere"], ["data.train:", "nowhere", "is not a directory"]),
    ("empty-folder", ["data.train.target=transcoder.data.AudioFolderDataset", "data.train.params={{root: {tmp}}}"],
     ["data.train:", "no audio files found"]),
    ("bad-split", ["data.train.params.splits=[dev-dirty]"], ["data.train:", "dev-dirty"]),
    ("bad-data-target", ["data.train.target=transcoder.data.NoSuchDataset"], ["data.train:", "NoSuchDataset"]),
    ("bad-model-target", ["model.target=transcoder.models.NoSuchModel"], ["NoSuchModel", "cannot be imported"]),
    ("fp16-on-cpu", ["training.precision=fp16"], ["training.precision=fp16 needs CUDA"]),
    ("prefetch-zero", ["data.prefetch_factor=0"], ["data.prefetch_factor=0: expected a positive integer"]),
    ("seed-text", ["training.seed=abc"], ["training.seed='abc'"]),
    ("seed-negative", ["training.seed=-1"], ["training.seed=-1"]),
    ("broken-yaml-override", ["training.max_steps=[1,"], ["override 'training.max_steps=[1,'", "not valid YAML"]),
    ("val-max-batches-zero", ["training.val_max_batches=0"], ["training.val_max_batches=0"]),
    ("val-max-batches-negative", ["training.val_max_batches=-1"], ["training.val_max_batches=-1"]),
    ("pin-memory-maybe", ["data.pin_memory=maybe"], ["data.pin_memory='maybe': expected true or false"]),
    ("missing-resume", ["--resume", "{tmp}/none.pt"], ["none.pt"]),
]


@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_value_is_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       overrides: list[str], expected: list[str]) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run_dir = tmp_path / "run"
    args = [o.replace("{tmp}", str(scratch)).replace("{{", "{").replace("}}", "}") for o in overrides]
    assert script.main([str(DEMO), "--output-dir", str(run_dir), "--device", "cpu", *BASE, *args]) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in expected:
        assert text in lines[0], lines[0]
    if "--resume" not in overrides:
        assert not run_dir.exists(), "a config error must not create the run folder"


def test_binary_file_as_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "model.pt"
    config.write_bytes(bytes(range(256)) * 4)
    assert script.main([str(config), "--output-dir", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.pt: not a text (UTF-8) YAML file" in lines[0], lines


def test_config_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert script.main([str(tmp_path), "--output-dir", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does not exist (or is a directory)" in lines[0], lines


def test_worker_error_is_reduced_to_its_message() -> None:
    from transcoder.data import AudioDataError

    err = AudioDataError("Caught AudioDataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                         "call last):\n  File \"x.py\", line 1, in f\n    g()\ntranscoder.data.base.AudioDataError: "
                         "AudioFolderDataset: 3 consecutive items failed")
    assert script.one_line(err) == "AudioFolderDataset: 3 consecutive items failed"



def test_missing_audio_file_is_reported_as_not_found(tmp_path: Path) -> None:
    from transcoder.data import AudioDecodeError, AudioFile

    missing = tmp_path / "clips" / "common_voice_en_1.mp3"
    with pytest.raises(AudioDecodeError) as info:
        AudioFile(str(missing))
    assert str(info.value) == f"{missing}: cannot open: file not found"
    assert "System error" not in str(info.value)


def test_skipped_file_names_reach_the_run_log(tmp_path: Path) -> None:
    import logging
    import warnings

    from transcoder.data import AudioDataError, AudioFolderDataset, AudioSkipWarning
    from transcoder.training.monitor import setup_text_logger

    (tmp_path / "bad.wav").write_bytes(b"not audio")
    dataset = AudioFolderDataset(str(tmp_path), clip_samples=1600)
    setup_text_logger(tmp_path, is_main=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AudioSkipWarning)
            with pytest.raises(AudioDataError, match="1 consecutive items"):
                dataset[0]
    finally:
        for handler in logging.getLogger("transcoder").handlers:
            handler.close()
        logging.getLogger("transcoder").handlers.clear()
    log = (tmp_path / "train.log").read_text()
    assert f"WARNING AudioFolderDataset: skipping '{tmp_path / 'bad.wav'}': cannot open as audio" in log
