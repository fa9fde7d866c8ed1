"""scripts/quality_curve.py: earlier runs' curves drawn beside a new one (``--compare``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tokenize import _load_script

quality_curve = _load_script("quality_curve")


def _point(step: int, minutes: float, mae: float, dnsmos: float | None = None) -> dict:
    scores = {"mae_db": mae, "mse_db": mae**2, "distinct_codes": 10, "entropy_bits": 3.0, "pesq": 1.1,
              "stoi": 0.6, "rendered_mel_mae_db": mae + 1, "windows": 4}
    if dnsmos is not None:
        scores["perceptual"] = {"recon": {"dnsmos": {"ovrl": dnsmos}, "dwer": {"wer": 0.5}}}
    return {"step": step, "minutes": minutes, "bitrate": 900.0, "heldout": dict(scores), "english": dict(scores)}


def _results(curve: list[dict]) -> dict:
    sets = {name: {"spec": {"target": "x", "params": {"root": f"/data/{name}"}}, "language": None}
            for name in ("heldout", "english")}
    rows = {"trivial": {"mae_db": 6.0, "pesq": 1.0, "stoi": 0.5, "bitrate": 900.0}}
    return {"sets": sets, "curve": curve,
            "anchors": {name: {"rows": rows, "notes": [], "original": None} for name in sets}}


def test_compared_curves_are_read_listed_and_drawn_on_a_minutes_axis(tmp_path: Path) -> None:
    old = _results([_point(1000, 5.0, 5.5, 1.2), _point(3000, 15.0, 4.9, 1.3)])
    (tmp_path / "old.json").write_text(json.dumps(old))
    new = _results([_point(900, 5.0, 5.0, 1.4), _point(2700, 15.0, 4.4, 1.5)])

    compared = quality_curve.load_compared([f"previous recipe={tmp_path / 'old.json'}"], new["sets"])
    assert list(compared) == ["previous recipe"]
    assert [p["step"] for p in compared["previous recipe"]] == [1000, 3000]

    table = quality_curve.compared_markdown(compared, new["sets"])
    assert "| previous recipe | 3000 | 15.0 | 4.900 | 4.900 |" in table

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: list = []
    real_savefig = plt.Figure.savefig

    def spy(fig, path, **kwargs):
        drawn.append([[line.get_label() for line in ax.get_lines()] for ax in fig.axes])
        drawn.append(fig.axes[0].get_lines()[1].get_xdata().tolist())
        drawn.append(fig.axes[-1].get_xlabel())
        return real_savefig(fig, path, **kwargs)

    plt.Figure.savefig = spy
    try:
        quality_curve.plot(new, tmp_path / "curve.png", compared)
    finally:
        plt.Figure.savefig = real_savefig
    assert (tmp_path / "curve.png").stat().st_size > 1000
    labels, old_x, xlabel = drawn
    assert "tokenizer (this run)" in labels[0] and "tokenizer (previous recipe)" in labels[0]
    assert old_x == [5.0, 15.0]  # the earlier curve is placed by its own minutes, not its steps
    assert "minutes" in xlabel


def test_a_plot_without_comparison_keeps_the_step_axis(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    results = _results([_point(100, 1.0, 6.0), _point(200, 2.0, 5.5)])
    seen: list[str] = []
    real_savefig = plt.Figure.savefig

    def spy(fig, path, **kwargs):
        seen.append(fig.axes[0].get_lines()[0].get_xdata().tolist())
        return real_savefig(fig, path, **kwargs)

    plt.Figure.savefig = spy
    try:
        quality_curve.plot(results, tmp_path / "curve.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert seen == [[100, 200]]
    assert quality_curve.compared_markdown({}, results["sets"]) == ""


@pytest.mark.parametrize(("content", "spec", "message"), [
    (None, "no-equals-sign", "expected LABEL=RESULTS_JSON"),
    (None, "old={missing}", "no file"),
    ("not json", "old={file}", "is not JSON"),
    ({"rows": []}, "old={file}", "is not a results.json of quality_curve.py"),
    ({"sets": {"heldout": {}}, "curve": []}, "old={file}", "no scores for the set(s) ['english']"),
])
def test_a_bad_comparison_is_refused_naming_the_file(tmp_path: Path, content, spec, message) -> None:
    file = tmp_path / "old.json"
    if content is not None:
        file.write_text(content if isinstance(content, str) else json.dumps(content))
    spec = spec.format(file=file, missing=tmp_path / "missing.json")
    with pytest.raises((ValueError, FileNotFoundError), match=None) as info:
        quality_curve.load_compared([spec], {"heldout": {}, "english": {}})
    assert message in str(info.value)


def test_a_label_given_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_results([])))
    with pytest.raises(ValueError, match="used twice"):
        quality_curve.load_compared([f"old={tmp_path / 'a.json'}", f"old={tmp_path / 'a.json'}"],
                                    {"heldout": {}, "english": {}})
