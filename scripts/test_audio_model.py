"""Smoke test of the model variants (``python scripts/test_audio_model.py``).

Builds each variant, runs forward + backward on random log-mel, and prints shapes, parameter
counts, tokens per second of audio, bits per second and time per step. Exits non-zero on any
failure. On a CPU the large 36-bit variant is built with fewer layers (``--cpu-large-layers``)
so the check finishes in seconds; on a GPU every variant is built in full.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from transcoder.models.audiobsq import PRESETS, AudioBSQModel

HOP_LENGTH = 160
SAMPLE_RATE = 16000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--input-length", type=int, default=1024, help="time frames T")
    parser.add_argument("--n-mels", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1, help="timed forward+backward steps per variant")
    parser.add_argument("--cpu-large-layers", type=int, default=2,
                        help="layers of the large variant on a CPU (the full 24 take minutes there)")
    parser.add_argument("--no-conv-module", action="store_true", help="build without the Conformer conv module")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def check_variant(name: str, args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    audioconfig = {"input_length": args.input_length, "input_size": args.n_mels,
                   "use_conv_module": not args.no_conv_module}
    note = ""
    if name == "large_b36" and device.type == "cpu":
        audioconfig["layers"] = args.cpu_large_layers
        note = f"{args.cpu_large_layers} of 24 layers (CPU)"
    model = AudioBSQModel.from_preset(name, audioconfig=audioconfig).to(device)
    mel = torch.rand(args.batch_size, args.input_length, args.n_mels, device=device) * 2 - 1
    recon, quant_loss, info = model(mel)  # warm-up, also checks the shapes
    assert recon.shape == mel.shape, f"reconstruction {tuple(recon.shape)} != input {tuple(mel.shape)}"
    codes, _, _ = model.encode(mel)
    grid = info["grid"]
    assert codes.shape == (args.batch_size, grid[0] * grid[1], model.embed_dim), tuple(codes.shape)
    assert torch.allclose(codes.norm(dim=-1), torch.ones((), device=device)), "codes are not on the unit sphere"
    start = time.perf_counter()
    for _ in range(args.steps):
        recon, quant_loss, info = model(mel)
        loss = (recon - mel).abs().mean() + quant_loss
        model.zero_grad(set_to_none=True)
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_seconds = (time.perf_counter() - start) / args.steps
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    tokens_per_second = model.tokens_per_second(HOP_LENGTH, SAMPLE_RATE)
    return {
        "variant": name, "bits": model.bits, "width": model.config.width, "layers": model.config.layers,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "input": tuple(mel.shape),
        "codes": tuple(codes.shape), "indices": tuple(info["indices"].shape), "tokens/s": tokens_per_second,
        "bit/s": tokens_per_second * model.bits, "s/step": step_seconds, "note": note,
    }


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)
    rows, failures = [], []
    for name in PRESETS:
        try:
            rows.append(check_variant(name, args))
        except Exception:  # noqa: BLE001 - report every variant, then fail
            failures.append(name)
            traceback.print_exc()
    header = f"{'variant':<10} {'bits':>4} {'width':>5} {'layers':>6} {'params(M)':>9} {'input':>16} {'codes':>15} " \
             f"{'indices':>13} {'tokens/s':>8} {'bit/s':>6} {'s/step':>7}  note"
    print(f"device {args.device}, batch {args.batch_size}, hop {HOP_LENGTH} at {SAMPLE_RATE} Hz, forward+backward")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<10} {r['bits']:>4} {r['width']:>5} {r['layers']:>6} {r['params_M']:>9.1f} "
              f"{str(r['input']):>16} {str(r['codes']):>15} {str(r['indices']):>13} {r['tokens/s']:>8.1f} "
              f"{r['bit/s']:>6.0f} {r['s/step']:>7.2f}  {r['note']}")
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("all variants OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
