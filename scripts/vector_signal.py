"""What norm-matched injection carries: per layer and position, how much of the unit vector u = v/||v|| is shared
by every context, and how much separates each family's labels (raw and centred vectors).

    python scripts/vector_signal.py [--cache runs/ao_design/slices.safetensors] [--layers 15,22]

Reads the windows `scripts/ao_design.py` cached (the last 16 subject vectors of each training context at each
layer; run `ao_design.py --probe` first to fill them). Printed per (layer, position from the end, vectors):
shared = ||mean u||^2, and per family the between-class variance of u (sum over labels of n_label/n ·
||mean_label u - mean u||^2). Vectors: raw; center_all = minus the mean of all cached positions of all contexts
(what `oracle.vector_preprocessing=center` does, with its own reference set); center_pos = minus the mean at
this position; zscore_all = center_all divided by the per-dimension standard deviation.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from grpo_ao.config import load_config
from grpo_ao.data import load_examples

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("topic", "sentiment", "language", "tense")


def key(text: str, layer: int) -> str:
    return hashlib.sha1(f"{layer}\x00{text}".encode()).hexdigest()  # as ao_design.SliceCache


def between(u: torch.Tensor, labels: list[str | None]) -> float:
    """Between-class variance of the rows of u [n, d] over the rows with a label."""
    idx = [i for i, lab in enumerate(labels) if lab is not None]
    sub, labs = u[idx], [labels[i] for i in idx]
    m = sub.mean(0)
    total = 0.0
    for lab in set(labs):
        rows = [j for j, x in enumerate(labs) if x == lab]
        total += len(rows) * float(((sub[rows].mean(0) - m) ** 2).sum())
    return total / len(idx)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=str(ROOT / "runs" / "ao_design" / "slices.safetensors"))
    p.add_argument("--layers", default="15,22", help="block indices (SmolLM2: 7, 15, 22 = 25/50/75 %%)")
    p.add_argument("--positions", default="1,2,3,5", help="positions from the end (1 = last token)")
    args = p.parse_args(argv)
    store = load_file(args.cache)
    examples = load_examples(load_config("smollm2", ["model.adapter=null"]).data)
    for layer in (int(x) for x in args.layers.split(",")):
        have = [e for e in examples if key(e.context, layer) in store]
        if not have:
            print(f"layer {layer}: nothing cached; run scripts/ao_design.py --probe first")
            continue
        every = torch.cat([store[key(e.context, layer)] for e in have]).float()
        mu, sd = every.mean(0), every.std(0)
        for pos in (int(x) for x in args.positions.split(",")):
            x = torch.stack([store[key(e.context, layer)][-pos] for e in have]).float()
            for name, y in (("raw", x), ("center_all", x - mu), ("center_pos", x - x.mean(0)),
                            ("zscore_all", (x - mu) / sd)):
                u = y / y.norm(dim=1, keepdim=True)
                fams = " ".join(f"{f} {between(u, [e.label_map.get(f) for e in have]):.3f}" for f in FAMILIES)
                print(f"layer {layer} pos -{pos} {name:10s} shared {float((u.mean(0) ** 2).sum()):.3f} {fams} "
                      f"(n={len(have)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
