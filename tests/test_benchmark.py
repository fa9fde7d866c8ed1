"""scripts/benchmark_train.py on tiny configs: it runs the real step and reports consistent figures."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_script", REPO / "scripts" / "benchmark_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def run(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    tiny = ["--steps", "2", "--warmup", "1", "--device", "cpu", "--batch-size", "2", "--json", str(out)]
    assert load_benchmark_module().main([str(DEMO), *tiny, *args]) == 0
    return json.loads(out.read_text())


def test_benchmark_reports_throughput_flops_and_time_split(tmp_path: Path) -> None:
    with_conv = run(tmp_path, "conv")
    without = run(tmp_path, "noconv", "--conv-module", "off")
    for result in (with_conv, without):
        assert result["samples_per_second"] > 0 and result["step_ms"] > 0
        assert math.isclose(result["audio_seconds_per_second"], result["samples_per_second"] * 1.28, rel_tol=1e-6)
        shares = [result[k] for k in ("share_data_wait", "share_frontend", "share_forward", "share_backward",
                                      "share_optimizer")]
        assert all(0 <= s <= 1 for s in shares) and 0.9 < sum(shares) <= 1.0 + 1e-6
    assert with_conv["conv_module"] and not without["conv_module"]
    # The conv module adds exactly its FLOPs: per token 2*(C*2C + C*C) for the pointwise layers and
    # 2*C*K for the depthwise conv, times 3 (forward + backward), times layers, in encoder and decoder.
    width, kernel, layers, tokens = 128, 7, 2, 2 * 16 * 8
    per_token = 2 * (width * 2 * width + width * width) + 2 * width * kernel
    expected = 3 * per_token * tokens * layers * 2
    measured = (with_conv["tflops_per_step"] - without["tflops_per_step"]) * 1e12
    assert math.isclose(measured, expected, rel_tol=0.02), (measured, expected)


def test_compare_reports_median_rates_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    mae = REPO / "configs" / "pretrain" / "mae_demo_librivox_mini.yaml"
    tiny = "|data.batch_size=2|model.params.audioconfig.layers=1"
    assert load_benchmark_module().main([
        "--compare", f"tok={DEMO}{tiny}", f"mae={mae}{tiny}", "--rounds", "2", "--steps", "1", "--warmup", "0",
        "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["median_steps_per_s"]) == ["tok", "mae"] and result["ratio_to_first"]["tok"] == 1.0
    assert all(len(rates) == 2 and min(rates) > 0 for rates in result["all_steps_per_s"].values())


def test_one_config_or_compare_not_both(capsys) -> None:
    module = load_benchmark_module()
    for argv in ([], [str(DEMO), "--compare", f"a={DEMO}"]):
        try:
            module.main(argv)
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    assert "give one CONFIG, or --compare" in capsys.readouterr().err
