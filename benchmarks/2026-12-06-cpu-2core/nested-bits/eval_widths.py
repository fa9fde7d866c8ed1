"""Held-out log-mel MAE and code statistics of tokenizer checkpoints at several code widths (nested bits)."""
import json
import sys
from collections import Counter

import numpy as np
import torch

from transcoder.api import load_tokenizer
from transcoder.data import build_dataset, collate_audio
from transcoder.evaluation.metrics import spectrogram_mae_db

torch.set_num_threads(1)
heldout, out = sys.argv[1], sys.argv[2]
runs = {"fixed18": [18], "fixed9": [9], "nested": [9, 12, 15, 18]}
results = []
for name, widths in runs.items():
    tok = load_tokenizer(f"/work/runs/nested/{name}/checkpoints/latest.pt", device="cpu")
    spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": heldout}}
    data = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    loader = torch.utils.data.DataLoader(data, batch_size=16, collate_fn=collate_audio)
    sums = {k: [0.0, 0] for k in widths}
    counts = {k: Counter() for k in widths}
    model = tok.model.eval()
    with torch.inference_mode():
        for batch in loader:
            valid = batch["num_valid"]
            keep = valid > 0
            wave = batch["audio"][keep]
            valid = valid[keep]
            mel = tok.frontend(wave)
            mel_db = tok.frontend.model_to_db(mel)
            for k in widths:
                bits = None if k == model.embed_dim else k
                codes, _, info = model.encode(mel, bits=bits)
                recon_db = tok.frontend.model_to_db(model.decode(codes, info["grid"]).float())
                for b in range(mel.shape[0]):
                    frames = min(mel.shape[1], -(-int(valid[b]) // tok.hop_length))
                    sums[k][0] += spectrogram_mae_db(recon_db[b:b+1, :frames], mel_db[b:b+1, :frames]).item() * frames
                    sums[k][1] += frames
                    rows = -(-frames // model.patch_size[0])
                    counts[k].update(info["indices"][b, :rows].flatten().tolist())
    for k in widths:
        total = sum(counts[k].values())
        p = np.array(list(counts[k].values())) / total
        results.append({"model": name, "bits": k, "bit_per_s": k * tok.tokens_per_second,
                        "mae_db": sums[k][0] / sums[k][1], "distinct_codes": len(counts[k]),
                        "code_entropy_bits": float(-(p * np.log2(p)).sum()), "tokens": total,
                        "windows": len(data)})
        print(json.dumps(results[-1]))
json.dump(results, open(out, "w"), indent=1)
