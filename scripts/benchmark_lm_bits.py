"""How many bits per second a language model needs for a tokenizer's codes (held-out cross-entropy).

Trains a small causal transformer on the codes of a train split and scores every code token of a
held-out split, for each token view (``full``: one token per 18-bit code; ``G x b``: ``G`` tokens of
``b`` bits per code, see ``transcoder/codes_tokens.py``)::

    python scripts/benchmark_lm_bits.py --train codes_train/ --eval codes_val/ --views full 9 \\
        --seconds 600 --output results/

(``--holdout PREFIX`` instead of ``--eval`` holds out the utterances of ``--train`` whose id starts with
PREFIX, e.g. one speaker's folder.) Printed and written to ``OUTPUT/results.json`` per view:

* ``lm_bits_per_token``: held-out cross-entropy of the LM, in bits per token (natural-log loss / ln 2);
* ``lm_bits_per_code`` and ``lm_bits_per_second`` (per token x tokens per code; per token x tokens per
  second of the codes header): the rate the LM actually has to model, beside the nominal ``bitrate``;
* ``unigram_entropy_bits_per_token``: plug-in entropy of the held-out tokens' own histogram (no
  context; an underestimate when the held-out set is small against the vocabulary);
* ``unigram_cross_entropy_bits_per_token``: held-out cross-entropy of a context-free model fitted on
  the train tokens (add-1/2 smoothing over the whole vocabulary): the baseline the LM must beat.

Model: token embedding + slot embedding (place of the token in its time row) + position within the
utterance, pre-norm ``nn.TransformerEncoder`` layers with a causal mask that also stops attention at
utterance starts, then a softmax over the vocabulary (``full`` view: an exact adaptive softmax over all
``2^bits`` codes, ids ordered by train frequency). Training reads :class:`transcoder.data.CodesDataset`
(sequences packed across utterances, BOS before each). Scoring reads each held-out utterance alone, in
windows of ``--context-codes`` codes: every code token is scored exactly once, with context from its
own utterance only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transcoder.codes import CodesIndex
from transcoder.codes_tokens import flatten_codes, groups_per_code
from transcoder.data import CodesDataset, collate_audio

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# context-free figures
# --------------------------------------------------------------------------------------------------


def token_counts(index: CodesIndex, ids: list[str], bits: int, group_bits: int | None) -> np.ndarray:
    """Histogram ``(G, 2^b)`` of the valid code tokens of ``ids``, per group position."""
    groups = groups_per_code(bits, group_bits)
    vocab = 1 << (bits // groups)
    counts = np.zeros((groups, vocab), dtype=np.int64)
    for uid in ids:
        tokens = flatten_codes(index.codes(uid, valid_only=True), bits, group_bits).reshape(-1, groups)
        for g in range(groups):
            counts[g] += np.bincount(tokens[:, g], minlength=vocab)
    return counts


def entropy_bits(counts: np.ndarray) -> float:
    """Plug-in entropy ``-sum p log2 p`` of a histogram, bits."""
    total = counts.sum()
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def unigram_cross_entropy_bits(train: np.ndarray, held_out: np.ndarray, alpha: float = 0.5) -> float:
    """Bits per held-out token under the train histogram with add-``alpha`` smoothing (one group)."""
    p = (train + alpha) / (train.sum() + alpha * train.size)
    return float(-(held_out * np.log2(p)).sum() / held_out.sum())


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


class TinyCausalLM(nn.Module):
    """Causal transformer over code tokens.

    Inputs ``tokens``, ``slot``, ``position`` and ``segment`` are ``(B, L)`` int64; attention is causal and
    restricted to the same ``segment`` (utterance piece). :meth:`nll` returns per-target negative
    log-likelihoods ``(N,)`` in nats for the positions selected by ``targets >= 0``.
    """

    def __init__(self, vocab: int, slots: int, context: int, d_model: int = 128, layers: int = 4, heads: int = 4,
                 adaptive_cutoffs: list[int] | None = None) -> None:
        super().__init__()
        self.vocab, self.heads = vocab, heads
        self.embed = nn.Embedding(vocab + 1, d_model)  # + BOS (id = vocab)
        self.slot = nn.Embedding(slots + 1, d_model)  # + "not a code token" (slot -1 -> index slots)
        self.position = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        if adaptive_cutoffs:
            self.head: nn.Module = nn.AdaptiveLogSoftmaxWithLoss(d_model, vocab, adaptive_cutoffs, div_value=4.0)
        else:
            self.head = nn.Linear(d_model, vocab)

    def hidden(self, tokens: Tensor, slot: Tensor, position: Tensor, segment: Tensor) -> Tensor:
        """``(B, L, d_model)`` final hidden states."""
        length = tokens.shape[1]
        slot = torch.where(slot < 0, torch.full_like(slot, self.slot.num_embeddings - 1), slot)
        x = self.embed(tokens) + self.slot(slot) + self.position(position.clamp_max(self.position.num_embeddings - 1))
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        allowed = causal & (segment[:, :, None] == segment[:, None, :])  # (B, L, L)
        x = self.blocks(x, mask=(~allowed).repeat_interleave(self.heads, dim=0))  # True: may not attend
        return self.norm(x)

    def nll(self, tokens: Tensor, slot: Tensor, position: Tensor, segment: Tensor, targets: Tensor) -> Tensor:
        h = self.hidden(tokens, slot, position, segment)
        keep = targets >= 0
        h, t = h[keep], targets[keep]
        if isinstance(self.head, nn.AdaptiveLogSoftmaxWithLoss):
            return -self.head(h, t).output
        return F.cross_entropy(self.head(h), t, reduction="none")


def _positions(start: Tensor) -> tuple[Tensor, Tensor]:
    """``(segment, position)`` ``(B, L)`` from a start mask: pieces split at utterance starts."""
    segment = start.long().cumsum(1)
    index = torch.arange(start.shape[1]).expand_as(start)
    first = torch.cummax(torch.where(start, index, torch.zeros_like(index)), dim=1).values
    return segment, index - first


# --------------------------------------------------------------------------------------------------
# one view
# --------------------------------------------------------------------------------------------------


class View:
    """A token view of the codes: remaps code tokens to model ids (frequency order for the full view)."""

    def __init__(self, name: str, bits: int, group_bits: int | None, train_counts: np.ndarray) -> None:
        self.name, self.bits, self.group_bits = name, bits, group_bits
        self.groups = groups_per_code(bits, group_bits)
        self.vocab = 1 << (bits // self.groups)
        self.adaptive = self.vocab > 4096
        if self.adaptive:  # ids by train frequency so the adaptive softmax's head holds the frequent codes
            order = np.lexsort((np.arange(self.vocab), -train_counts.sum(0)))
            self.rank = np.empty(self.vocab, dtype=np.int64)
            self.rank[order] = np.arange(self.vocab)
        else:
            self.rank = np.arange(self.vocab, dtype=np.int64)

    def cutoffs(self) -> list[int] | None:
        if not self.adaptive:
            return None
        return [c for c in (2048, 16384, 65536) if c < self.vocab]

    def model_ids(self, tokens: Tensor, code: Tensor) -> Tensor:
        """Code tokens -> model ids; other tokens (BOS, padding) -> ``vocab`` (the BOS id)."""
        rank = torch.from_numpy(self.rank)
        return torch.where(code, rank[tokens.clamp(0, self.vocab - 1)], torch.full_like(tokens, self.vocab))


def training_batches(dataset: CodesDataset, batch_size: int, view: View) -> Iterator[dict[str, Tensor]]:
    """Endless model inputs ``(B, L - 1)`` and targets from ``dataset`` (targets: code tokens only, -100 else)."""
    stream = dataset.stream()
    while True:
        batch = collate_audio([next(stream) for _ in range(batch_size)])
        code = batch["slot"] >= 0
        ids = view.model_ids(batch["tokens"], code)
        segment, position = _positions(batch["start"])
        targets = torch.where(code & batch["mask"], ids, torch.full_like(ids, -100))
        yield {"tokens": ids[:, :-1], "slot": batch["slot"][:, :-1], "position": position[:, :-1],
               "segment": segment[:, :-1], "targets": targets[:, 1:]}


def held_out_windows(index: CodesIndex, ids: list[str], view: View, context: int,
                     batch_size: int) -> Iterator[dict[str, Tensor]]:
    """Each utterance alone, ``[BOS] tokens``, in windows of ``context`` inputs; every code token a target once."""
    row = int(index.header["grid_per_window"][1]) * view.groups
    windows = []
    for uid in ids:
        tokens = flatten_codes(index.codes(uid, valid_only=True), view.bits, view.group_bits)
        ids_ = np.concatenate([[view.vocab], view.rank[tokens]])
        slots = np.concatenate([[-1], np.arange(len(tokens)) % row])
        for s in range(0, len(tokens), context):
            windows.append((ids_[s: s + context], slots[s: s + context], ids_[s + 1: s + context + 1]))
    for first in range(0, len(windows), batch_size):
        chunk = windows[first: first + batch_size]
        length = max(len(w[0]) for w in chunk)
        tokens = torch.full((len(chunk), length), view.vocab, dtype=torch.int64)
        slot = torch.full((len(chunk), length), -1, dtype=torch.int64)
        targets = torch.full((len(chunk), length), -100, dtype=torch.int64)
        for i, (inp, sl, tgt) in enumerate(chunk):
            tokens[i, : len(inp)] = torch.from_numpy(inp)
            slot[i, : len(sl)] = torch.from_numpy(sl)
            targets[i, : len(tgt)] = torch.from_numpy(tgt)
        position = torch.arange(length).expand(len(chunk), length)
        yield {"tokens": tokens, "slot": slot, "position": position,
               "segment": torch.zeros_like(tokens), "targets": targets}


@torch.no_grad()
def evaluate(model: TinyCausalLM, batches: list[dict[str, Tensor]]) -> tuple[float, int]:
    """Mean negative log-likelihood in bits per target token, and the number of targets."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        nll = model.nll(batch["tokens"], batch["slot"], batch["position"], batch["segment"], batch["targets"])
        total, count = total + float(nll.sum()), count + int(nll.numel())
    model.train()
    return total / count / LN2, count


def run_view(args: argparse.Namespace, name: str, group_bits: int | None, train_index: CodesIndex,
             train_ids: list[str], eval_index: CodesIndex, eval_ids: list[str]) -> dict[str, Any]:
    bits = int(train_index.header["bits"])
    nf = int(train_index.header["grid_per_window"][1])
    train_counts = token_counts(train_index, train_ids, bits, group_bits)
    eval_counts = token_counts(eval_index, eval_ids, bits, group_bits)
    view = View(name, bits, group_bits, train_counts)
    context = args.context_codes * view.groups
    torch.manual_seed(args.seed)
    model = TinyCausalLM(view.vocab, nf * view.groups, context, args.d_model, args.layers, args.heads,
                         view.cutoffs())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    keep = set(train_ids)
    dataset = CodesDataset(train_index.folder, seq_len=context + 1, group_bits=group_bits, bos=True,
                           seed=args.seed, select=lambda u: u.id in keep, rank=0, world_size=1)
    batches = training_batches(dataset, args.batch_size, view)
    held_out = list(held_out_windows(eval_index, eval_ids, view, context, args.batch_size * 2))
    curve = []
    start, step, seen = time.monotonic(), 0, 0
    next_eval = 0.0
    while True:
        elapsed = time.monotonic() - start
        done = elapsed >= args.seconds or (args.max_steps is not None and step >= args.max_steps)
        if elapsed >= next_eval or done:
            bits_per_token, scored = evaluate(model, held_out)
            curve.append({"step": step, "seconds": round(elapsed, 1), "train_tokens_seen": seen,
                          "held_out_bits_per_token": round(bits_per_token, 4)})
            print(f"[{name}] step {step} {elapsed:6.0f} s  held-out {bits_per_token:.3f} bit/token", flush=True)
            next_eval = elapsed + args.seconds / max(args.evals - 1, 1)
        if done:
            break
        batch = next(batches)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model.nll(batch["tokens"], batch["slot"], batch["position"], batch["segment"], batch["targets"]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step, seen = step + 1, seen + int((batch["targets"] >= 0).sum())
    tokens_per_second = float(train_index.header["tokens_per_second"]) * view.groups
    lm_bits = curve[-1]["held_out_bits_per_token"]
    unigram = float(np.mean([entropy_bits(c) for c in eval_counts]))
    unigram_ce = float(np.mean([unigram_cross_entropy_bits(t, e) for t, e in zip(train_counts, eval_counts,
                                                                                  strict=True)]))
    return {
        "view": name, "group_bits": view.bits // view.groups, "tokens_per_code": view.groups,
        "vocab": view.vocab, "context_tokens": context, "tokens_per_second": tokens_per_second,
        "parameters": sum(p.numel() for p in model.parameters()), "steps": step,
        "train_seconds": curve[-1]["seconds"], "train_tokens_seen": seen,
        "train_tokens_per_epoch": int(train_counts.sum()), "held_out_tokens": scored,
        "lm_bits_per_token": lm_bits, "lm_bits_per_code": lm_bits * view.groups,
        "lm_bits_per_second": lm_bits * tokens_per_second,
        "unigram_entropy_bits_per_token": unigram, "unigram_entropy_bits_per_second": unigram * tokens_per_second,
        "unigram_cross_entropy_bits_per_token": unigram_ce,
        "unigram_cross_entropy_bits_per_second": unigram_ce * tokens_per_second,
        "curve": curve,
    }


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def parse_view(text: str) -> tuple[str, int | None]:
    if text == "full":
        return "full", None
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"view {text!r}: 'full' or the bits per token (e.g. 9)") from None
    return f"{bits}-bit groups", bits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="codes folder of the train split")
    parser.add_argument("--eval", default=None, help="codes folder of the held-out split")
    parser.add_argument("--holdout", default=None, metavar="PREFIX",
                        help="hold out the utterances of --train whose id starts with PREFIX (instead of --eval)")
    parser.add_argument("--views", nargs="+", type=parse_view, default=[("full", None), ("9-bit groups", 9)],
                        help="'full' and/or bits per token of a grouped view (default: full 9)")
    parser.add_argument("--seconds", type=float, default=600.0, help="training time per view")
    parser.add_argument("--max-steps", type=int, default=None, help="stop a view after this many steps")
    parser.add_argument("--evals", type=int, default=4, help="held-out evaluations per view (the last at the end)")
    parser.add_argument("--context-codes", type=int, default=64, help="codes of context (x tokens per code)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default=None, help="folder for results.json")
    args = parser.parse_args(argv)
    if (args.eval is None) == (args.holdout is None):
        parser.error("give exactly one of --eval FOLDER and --holdout PREFIX")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The fused inference path of nn.TransformerEncoderLayer is far slower with a per-sample mask on CPU.
    torch.backends.mha.set_fastpath_enabled(False)
    train_index = CodesIndex.open(args.train)
    if args.eval is not None:
        eval_index = CodesIndex.open(args.eval)
        train_ids, eval_ids = [u.id for u in train_index], [u.id for u in eval_index]
        held_out = f"folder {args.eval}"
    else:
        eval_index = train_index
        eval_ids = [u.id for u in train_index if u.id.startswith(args.holdout)]
        train_ids = [u.id for u in train_index if not u.id.startswith(args.holdout)]
        held_out = f"utterances of {args.train} with ids starting {args.holdout!r}"
    if not train_ids or not eval_ids:
        raise SystemExit(f"error: {len(train_ids)} train and {len(eval_ids)} held-out utterances: both must be > 0")
    for key in ("bits", "tokens_per_second", "grid_per_window", "checkpoint_sha256"):
        if train_index.header.get(key) != eval_index.header.get(key):
            raise SystemExit(f"error: train and held-out codes differ in {key}: {train_index.header.get(key)!r} vs "
                             f"{eval_index.header.get(key)!r}")
    header = train_index.header
    results: dict[str, Any] = {
        "train": str(args.train), "held_out": held_out, "train_utterances": len(train_ids),
        "held_out_utterances": len(eval_ids),
        "train_hours": sum(train_index[i].num_samples / train_index[i].sample_rate for i in train_ids) / 3600,
        "held_out_hours": sum(eval_index[i].num_samples / eval_index[i].sample_rate for i in eval_ids) / 3600,
        "checkpoint": header.get("checkpoint"), "checkpoint_sha256": header.get("checkpoint_sha256"),
        "bits": header["bits"], "codes_per_second": header["tokens_per_second"], "nominal_bitrate": header["bitrate"],
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("views",)},
        "views": [],
    }
    for name, group_bits in args.views:
        results["views"].append(run_view(args, name, group_bits, train_index, train_ids, eval_index, eval_ids))
    print(f"\nheld out: {held_out} ({results['held_out_hours'] * 60:.1f} min); nominal {header['bitrate']:.0f} bit/s "
          f"({header['bits']} bits x {header['tokens_per_second']:g} codes/s)")
    print(f"{'view':<16}{'vocab':>8}{'LM bit/tok':>12}{'LM bit/s':>10}{'unigram H':>11}{'unigram CE':>12}"
          f"{'(bit/s)':>9}{'steps':>7}")
    for view in results["views"]:
        print(f"{view['view']:<16}{view['vocab']:>8}{view['lm_bits_per_token']:>12.3f}{view['lm_bits_per_second']:>10.0f}"
              f"{view['unigram_entropy_bits_per_token']:>11.3f}{view['unigram_cross_entropy_bits_per_token']:>12.3f}"
              f"{view['unigram_cross_entropy_bits_per_second']:>9.0f}{view['steps']:>7}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
