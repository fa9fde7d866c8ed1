"""Learning curve of one training run: score every numbered checkpoint on held-out material, beside the anchors.

    python scripts/quality_curve.py --run outputs/curve --heldout /work/corpus/val/asterisk_it_IT_m_Carlo \\
        --english data/librivox-mini --perceptual --output benchmarks/DATE-MACHINE/quality-curve

For every ``checkpoints/step_N.pt`` of ``--run`` (a run of ``scripts/main_audio_tokenizer.py`` with
``training.ckpt_every``), the EMA weights (raw when the run keeps none) are evaluated with
:func:`transcoder.evaluation.evaluate.evaluate_tokenizer` on

* ``--heldout``: an audio folder of a voice the run never trained on: log-mel MAE (dB), distinct codes,
  PESQ-WB / STOI through Griffin-Lim and, with ``--perceptual``, DNSMOS (no dWER: the recogniser is
  English; pass ``--heldout-language en`` for an English voice);
* ``--english`` (optional): English speech (an audio folder, or a LibriSpeech-layout root such as the
  bundled ``data/librivox-mini``, whose transcripts add a plain WER): the same metrics plus dWER.

The anchors (:mod:`transcoder.evaluation.anchors`: the trivial pooled-mel codec at the run's exact
bitrate, Griffin-Lim from the true mel, Opus / Codec 2 when installed) are scored once on the same windows.
A checkpoint's minutes are its file time minus the run's ``config.yaml`` time (written at the start).
Each checkpoint's scores are cached in ``--output/checkpoints/`` (rerun the command while the run trains to
add new checkpoints). Writes ``results.json``, ``results.md`` and ``curve.png`` into ``--output``.

``--compare LABEL=RESULTS_JSON`` (repeatable) draws the tokenizer curves of earlier runs of this script (their
``results.json``, scored on the same sets) beside this one; the x axis is then minutes of wall time, so recipes
with different step rates compare at equal training time, and ``results.md`` lists every curve's points::

    python scripts/quality_curve.py --run outputs/new --heldout ... --output OUT \
        --compare "previous recipe=benchmarks/DATE-MACHINE/quality-curve-old/results.json"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from transcoder.api import load_tokenizer
from transcoder.data import build_dataset
from transcoder.evaluation.anchors import evaluate_anchors
from transcoder.evaluation.evaluate import evaluate_tokenizer, write_metrics_json
from transcoder.evaluation.perceptual import MissingExtraError, require_eval_extra
from transcoder.evaluation.subset import sources_line
from transcoder.utils.messages import install_console_warnings

STEP = re.compile(r"step_(\d+)\.pt$")


def data_spec(root: str) -> dict[str, Any]:
    """LibriSpeech layout (transcripts) when ``root`` holds a ``LibriSpeech`` folder or split folders, else an
    audio folder."""
    path = Path(root)
    if (path / "LibriSpeech").is_dir() or any(p.name.startswith(("dev-", "test-", "train-")) for p in path.iterdir()):
        splits = sorted(p.name for p in (path / "LibriSpeech" if (path / "LibriSpeech").is_dir() else path).iterdir()
                        if p.is_dir())
        return {"target": "transcoder.data.LibriSpeechDataset", "params": {"root": root, "splits": splits}}
    return {"target": "transcoder.data.AudioFolderDataset", "params": {"root": root}}


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in (run / "checkpoints").glob("step_*.pt") if (m := STEP.search(p.name))]
    return sorted(found)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The curve's numbers from one evaluate_tokenizer result."""
    audio = result.get("audio", {})
    row = {"windows": result["windows"], "mae_db": result["spectrogram"]["mae_db"],
           "mse_db": result["spectrogram"]["mse_db"], "distinct_codes": result["codebook"]["distinct_codes"],
           "entropy_bits": result["codebook"]["entropy_bits"],
           "pesq": audio.get("recon", {}).get("pesq"), "stoi": audio.get("recon", {}).get("stoi"),
           "rendered_mel_mae_db": audio.get("recon", {}).get("mel_mae_db"), "subset": result.get("subset")}
    if "perceptual" in result:
        row["perceptual"] = {k: {m: v for m, v in p.items() if m != "transcripts"}
                             for k, p in result["perceptual"].items()}
    return row


def score_checkpoint(path: Path, sets: dict[str, tuple[dict[str, Any], str | None]],
                     args: argparse.Namespace, audio: bool = True) -> dict[str, Any]:
    tok = load_tokenizer(path, device=args.device, use_ema=True, vocoder_kwargs={"n_iter": args.gl_iters},
                         trust_config=args.trust_config)
    out: dict[str, Any] = {"step": tok.checkpoint_step, "weights": tok.weights, "bitrate": tok.bitrate}
    for name, (spec, language) in sets.items():
        dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
        result = evaluate_tokenizer(tok, dataset, batch_size=args.batch_size, max_batches=args.max_batches,
                                    audio_metrics=audio, num_audio=0, perceptual=args.perceptual and audio,
                                    language=language, dataset_spec=spec, quiet=False)
        print(f"step {tok.checkpoint_step} ({name}): {sources_line(result['subset'])}", flush=True)
        out[name] = summarize(result)
    return out


def score_anchors(path: Path, sets: dict[str, tuple[dict[str, Any], str | None]],
                  args: argparse.Namespace) -> dict[str, Any]:
    from transcoder.evaluation.perceptual import PerceptualScorer

    tok = load_tokenizer(path, device=args.device, use_ema=True, vocoder_kwargs={"n_iter": args.gl_iters},
                         trust_config=args.trust_config)
    out = {}
    for name, (spec, language) in sets.items():
        dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
        scorer = PerceptualScorer(tok.sample_rate, language=language, show_progress=True) if args.perceptual else None
        result = evaluate_anchors(dataset, tok.frontend, tok.vocoder, tok.bitrate, batch_size=args.batch_size,
                                  max_batches=args.max_batches, perceptual=scorer, quiet=False)
        print(f"anchors ({name}): {sources_line(result['subset'])}", flush=True)
        result.pop("examples")
        for row in [*result["rows"].values(), result["original"] or {}]:
            (row.get("perceptual") or {}).pop("transcripts", None)
        out[name] = result
    return out


def minutes_of(run: Path, path: Path) -> float:
    return (path.stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 60.0


def _f(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and value == value else "-"


def _dnsmos(row: dict[str, Any]) -> Any:
    return ((row.get("perceptual") or {}).get("dnsmos") or {}).get("ovrl")


def _dwer(row: dict[str, Any]) -> Any:
    return ((row.get("perceptual") or {}).get("dwer") or {}).get("wer")


def _recon(point: dict[str, Any]) -> dict[str, Any]:
    """A curve point's tokenizer rendering in the anchors' row shape (``{"perceptual": scores}``)."""
    return {"perceptual": (point.get("perceptual") or {}).get("recon")}


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for name in results["sets"]:
        lines += [f"### {name}: {results['sets'][name]['spec']['params']['root']}", "",
                  "| row | step | minutes | bit/s | MAE dB | distinct codes | PESQ-WB | STOI | rendered mel MAE dB "
                  "| DNSMOS OVRL | dWER |", "|" + "---|" * 11]
        for point in results["curve"]:
            r = point[name]
            lines.append(f"| tokenizer | {point['step']} | {point['minutes']:.1f} | {point['bitrate']:g} | "
                         f"{_f(r['mae_db'])} | {r['distinct_codes']} | {_f(r['pesq'])} | {_f(r['stoi'])} | "
                         f"{_f(r['rendered_mel_mae_db'])} | {_f(_dnsmos(_recon(r)))} | {_f(_dwer(_recon(r)))} |")
        for anchor, r in results["anchors"][name]["rows"].items():
            lines.append(f"| {anchor} | - | - | {_f(r.get('bitrate'), 'g')} | {_f(r.get('mae_db'))} | - | "
                         f"{_f(r.get('pesq'))} | {_f(r.get('stoi'))} | {_f(r.get('mel_mae_db'))} | "
                         f"{_f(_dnsmos(r))} | {_f(_dwer(r))} |")
        original = results["anchors"][name].get("original")
        if original:
            lines.append(f"| original | - | - | - | 0 | - | - | - | - | {_f(_dnsmos(original))} | "
                         f"{_f(_dwer(original))} |")
        lines += [*[f"- {note}" for note in results["anchors"][name]["notes"]], ""]
    return "\n".join(lines)


def load_compared(specs: list[str], sets: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``["LABEL=results.json", ...]`` → ``{label: curve points}`` of earlier runs of this script.

    Raises:
        ValueError: a spec without ``=``, a repeated label, a file that is not this script's results, or one
            scored on other evaluation sets (the set names must match, so the curves share their windows).
        FileNotFoundError: a missing results file.
    """
    compared: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        label, sep, file = spec.partition("=")
        if not sep or not label.strip() or not file.strip():
            raise ValueError(f"--compare {spec!r}: expected LABEL=RESULTS_JSON")
        label = label.strip()
        if label in compared or label == "this run":
            raise ValueError(f"--compare {spec!r}: the label {label!r} is used twice")
        path = Path(file.strip())
        if not path.is_file():
            raise FileNotFoundError(f"--compare {spec!r}: no file {path}")
        try:
            other = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--compare {spec!r}: {path} is not JSON ({err})") from err
        if not isinstance(other, dict) or not isinstance(other.get("curve"), list) or "sets" not in other:
            raise ValueError(f"--compare {spec!r}: {path} is not a results.json of quality_curve.py "
                             "(expected the keys 'sets' and 'curve')")
        missing = sorted(set(sets) - set(other["sets"]))
        if missing:
            raise ValueError(f"--compare {spec!r}: {path} has no scores for the set(s) {missing} "
                             f"(it has {sorted(other['sets'])}); score both runs on the same sets")
        compared[label] = other["curve"]
    return compared


def _panel_values(curve: list[dict[str, Any]], key: str, set_name: str) -> list[Any]:
    """One panel's y values along a curve (``None`` where a point has no such metric)."""
    if key == "dnsmos":
        return [_dnsmos(_recon(p[set_name])) for p in curve]
    if key == "dwer":
        return [_dwer(_recon(p[set_name])) for p in curve]
    return [p[set_name].get(key) for p in curve]


def _plottable(xs: list[float], ys: list[Any]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if isinstance(y, (int, float)) and y == y]
    return [x for x, _ in kept], [y for _, y in kept]


def compared_markdown(compared: dict[str, list[dict[str, Any]]], sets: dict[str, Any]) -> str:
    """The compared runs' points (step, minutes, MAE per set), or "" without any."""
    if not compared:
        return ""
    names = list(sets)
    lines = ["", "### Compared runs", "", "| run | step | minutes | " + " | ".join(f"{n} MAE dB" for n in names) + " |",
             "|" + "---|" * (3 + len(names))]
    for label, other in compared.items():
        for point in other:
            lines.append(f"| {label} | {point['step']} | {point['minutes']:.1f} | "
                         + " | ".join(_f(point[n].get("mae_db")) for n in names) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path, compared: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """The curve (black) against the anchors (dashed), one panel per metric; with ``compared`` also the earlier
    curves, on an x axis of minutes of wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = compared or {}
    name = next(iter(results["sets"]))
    curve = results["curve"]
    steps = [p["minutes"] if compared else p["step"] for p in curve]
    panels = [("mae_db", "log-mel MAE (dB), held-out voice"), ("pesq", "PESQ-WB (Griffin-Lim)"),
              ("stoi", "STOI (Griffin-Lim)")]
    perceptual = any("perceptual" in p[name] for p in curve)
    if perceptual:
        panels.append(("dnsmos", "DNSMOS OVRL (Griffin-Lim)"))
    english = next((n for n in results["sets"] if n != name), None)
    if perceptual and english:
        panels.append(("dwer", "dWER, English set"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.5, 2.6 * len(panels)), sharex=True, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, panels, strict=True):
        set_name = english if key == "dwer" else name
        ax.plot(*_plottable(steps, _panel_values(curve, key, set_name)), "o-", color="black",
                label="tokenizer (this run)" if compared else "tokenizer")
        for j, (label, other) in enumerate(compared.items()):
            xs = [p["minutes"] for p in other]
            ax.plot(*_plottable(xs, _panel_values(other, key, set_name)), "s:", color=colors[-1 - j % len(colors)],
                    label=f"tokenizer ({label})")
        for i, (anchor, row) in enumerate(results["anchors"][set_name]["rows"].items()):
            value = {"dnsmos": _dnsmos(row), "dwer": _dwer(row)}.get(key, row.get(key))
            if isinstance(value, (int, float)) and value == value:
                ax.axhline(value, ls="--", color=colors[i % len(colors)], label=anchor)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if compared:
        axes[-1].set_xlabel("minutes of wall time (each run's own)")
    else:
        axes[-1].set_xlabel("training step")
        top = axes[0].secondary_xaxis("top", functions=_step_minutes(curve))
        top.set_xlabel("minutes of wall time")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step_minutes(curve: list[dict[str, Any]]) -> tuple[Any, Any]:
    import numpy as np

    steps = np.array([0] + [p["step"] for p in curve], dtype=float)
    minutes = np.array([0.0] + [p["minutes"] for p in curve], dtype=float)
    return (lambda s: np.interp(s, steps, minutes), lambda m: np.interp(m, minutes, steps))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder with checkpoints/step_N.pt and config.yaml")
    parser.add_argument("--heldout", required=True, help="audio folder of a voice the run did not train on")
    parser.add_argument("--heldout-language", default=None, help="its language ('en' enables dWER on it)")
    parser.add_argument("--english", default=None, help="English speech (audio folder or LibriSpeech layout)")
    parser.add_argument("--output", required=True, help="output folder (results.json, results.md, curve.png)")
    parser.add_argument("--perceptual", action="store_true", help="DNSMOS and dWER (needs the 'eval' extra)")
    parser.add_argument("--steps", default=None, help="only these steps, comma-separated (default: every one)")
    parser.add_argument("--audio-steps", default=None,
                        help="audio and perceptual metrics only at these steps, comma-separated (default: every "
                             "checkpoint; the others get the spectrogram and code metrics)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--max-batches", type=int, default=None, help="limit the windows of each set")
    parser.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--trust-config", action="store_true",
                        help="let the checkpoint's config name classes outside this project "
                             "(only for a checkpoint of your own code)")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=RESULTS_JSON",
                        help="also draw an earlier run's curve (its results.json from this script, same sets); "
                             "the x axis becomes minutes of wall time (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    install_console_warnings()
    args = parse_args(argv)
    try:
        if args.perceptual:
            require_eval_extra()
        run, output = Path(args.run), Path(args.output)
        found = checkpoints(run)
        if args.steps:
            wanted = {int(s) for s in args.steps.split(",")}
            found = [(s, p) for s, p in found if s in wanted]
        if not found:
            raise FileNotFoundError(f"no checkpoints/step_N.pt under {run} (train with training.ckpt_every=N)")
        sets = {"heldout": (data_spec(args.heldout), args.heldout_language)}
        if args.english:
            sets["english"] = (data_spec(args.english), "en")
        compared = load_compared(args.compare, sets)
        audio_steps = {int(s) for s in args.audio_steps.split(",")} if args.audio_steps else None
        cache = output / "checkpoints"
        cache.mkdir(parents=True, exist_ok=True)
        curve = []
        for step, path in found:
            point_path = cache / f"step_{step:07d}.json"
            audio = audio_steps is None or step in audio_steps
            cached = json.loads(point_path.read_text()) if point_path.is_file() else None
            if cached is None or (audio and cached["heldout"].get("pesq") is None):
                started = time.perf_counter()
                point = score_checkpoint(path, sets, args, audio)
                point["minutes"] = minutes_of(run, path)
                point["eval_seconds"] = time.perf_counter() - started
                write_metrics_json(point_path, point)
                print(f"step {step}: held-out MAE {point['heldout']['mae_db']:.3f} dB "
                      f"({point['eval_seconds']:.0f} s)", flush=True)
            curve.append(json.loads(point_path.read_text()))
        anchors_path = cache / "anchors.json"
        if not anchors_path.is_file():
            started = time.perf_counter()
            anchors = score_anchors(found[-1][1], sets, args)
            anchors["seconds"] = time.perf_counter() - started
            write_metrics_json(anchors_path, anchors)
            print(f"anchors scored in {anchors['seconds']:.0f} s", flush=True)
        anchors = json.loads(anchors_path.read_text())
        results = {"command": sys.argv, "run": str(run), "perceptual": args.perceptual,
                   "sets": {name: {"spec": spec, "language": lang} for name, (spec, lang) in sets.items()},
                   "anchors": {k: v for k, v in anchors.items() if k != "seconds"}, "curve": curve}
        write_metrics_json(output / "results.json", results)
        (output / "results.md").write_text(markdown(results) + compared_markdown(compared, results["sets"]) + "\n")
        plot(results, output / "curve.png", compared)
    except (MissingExtraError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"wrote {output / 'results.json'}, {output / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
