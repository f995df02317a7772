"""AO pretraining design experiments on cached SmolLM2 activations: one variable at a time, a table per run.

    python scripts/ao_design.py --steps 200 --variants mix,yes_no_only,shipped
    python scripts/ao_design.py --list                   # the variants and their overrides
    python scripts/ao_design.py --probe                  # linear-probe ceilings per family only

The subject's activations are extracted ONCE per (text, layer) for the last 16 tokens (causal: a window of K
tokens ending m tokens before the end is a slice of them) and cached under --cache; every variant then draws
its items with the recipe's own `ao_tasks.draw_items`, trains with the recipe's `train_steps` (fresh LoRA,
cosine schedule over --steps) and is scored with the recipe's cheap check (`curve_point`) every --eval-every
steps: held-out yes/no (Yes vs No first-token logprob) and open questions (candidate logprob), real vs the
counterfactual control, per family. Held-out = `--heldout` (default builtin_eval, the set the shipped target
is measured on), with each context's open label questions added from its labels (the training data's
wording), so open accuracy is measured on the same clean contexts.

The linear probe (`--probe`): per family, a multinomial logistic regression on the mean of the last 5
vectors at one layer, trained on the training contexts' labels, accuracy on the held-out contexts.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grpo_ao import ao_heldout, ao_tasks
from grpo_ao.calibration import auroc
from grpo_ao.config import load_config
from grpo_ao.data import QA, load_examples
from grpo_ao.grading import is_yes_no_question
from grpo_ao.metrics import NullSink
from grpo_ao.models import num_layers
from grpo_ao.recipes import ao_sft
from grpo_ao.recipes.setup import load_oracle, optimizer_and_scheduler, seed_everything
from grpo_ao.steering import extract_in_batches, layer_for_percent

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 16
BASE = ["model.adapter=null", "logging.progress=false", "logging.checkpoint_every=100000", "eval.batch_size=32",
        "ao_sft.context_prediction_frac=0.0", "ao_sft.open_frac=0.5", "ao_sft.yes_no_sampling=balanced",
        "data.layer_percents=[50]", "ao_sft.heldout_examples=300", "ao_sft.lr=1e-3", "ao_sft.warmup_steps=10"]
"""Every variant starts from these: 8 open + 8 balanced yes/no per batch of 16, layer 50 %, K 1-5 at the end."""
VARIANTS: dict[str, list[str]] = {
    "mix": [],
    "yes_no_only": ["ao_sft.open_frac=0.0"],
    "natural_yes_no": ["ao_sft.yes_no_sampling=natural"],
    "family_yes_no": ["ao_sft.yes_no_sampling=family"],
    "family_pairs": ["ao_sft.yes_no_sampling=family", "ao_sft.yes_no_pairs=true"],
    "shipped": ["ao_sft.yes_no_sampling=natural", "ao_sft.open_frac=0.45", "ao_sft.context_prediction_frac=0.2",
                "data.layer_percents=[25,50,75]"],
    "open_0.25": ["ao_sft.open_frac=0.25"],
    "ctx_0.2": ["ao_sft.context_prediction_frac=0.2", "ao_sft.open_frac=0.4"],
    "layers_25_50_75": ["data.layer_percents=[25,50,75]"],
    "all_linear": ["lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"],
    "jitter": ["ao_sft.position_jitter=5", "ao_sft.max_positions=10"],
    "lr_3e-3": ["ao_sft.lr=3e-3"],
    "lr_3e-4": ["ao_sft.lr=3e-4"],
    "k5": ["data.min_positions=5"],
    "open_only_k5": ["data.min_positions=5", "ao_sft.open_frac=1.0"],
}


def with_open_questions(held, train):
    """Each held-out context gets the open label question of each family it has a label for, worded as in the
    training data (the question whose references are that family's label values)."""
    wording = {}
    for ex in train:
        for qa in ex.qas:
            if qa.reference is not None and ao_tasks._kind(qa.question, qa.reference) == "open" and qa.family:
                wording.setdefault(qa.family, qa.question)
    out = []
    for ex in held:
        asked = {qa.question for qa in ex.qas}
        extra = tuple(QA(wording[f], v, f) for f, v in ex.labels if f in wording and wording[f] not in asked)
        out.append(replace(ex, qas=ex.qas + extra))
    return out


class SliceCache:
    """(text, layer) -> the last min(WINDOW, n_tokens) vectors [n, hidden], extracted in batches, kept on disk."""

    def __init__(self, model, tokenizer, context_format: str, path: Path):
        self.model, self.tokenizer, self.context_format, self.path = model, tokenizer, context_format, path
        self.store = load_file(str(path)) if path.exists() else {}
        self.means: dict[int, torch.Tensor] = {}
        """layer -> the vector subtracted from every window read at that layer (`center`); empty: raw vectors"""

    def center(self, texts, layers) -> None:
        """Subtract, at each layer, the mean of the cached windows (all positions) of `texts` (the training
        contexts) from every vector read later: what is left is the part that differs between contexts."""
        for layer in sorted(set(layers)):
            self.ensure([(t, layer) for t in texts])
            self.means[layer] = torch.cat([self.store[self.key(t, layer)] for t in texts]).mean(0)

    @staticmethod
    def key(text: str, layer: int) -> str:
        return hashlib.sha1(f"{layer}\x00{text}".encode()).hexdigest()

    def ensure(self, pairs) -> None:
        todo = sorted({(t, layer) for t, layer in pairs if self.key(t, layer) not in self.store})
        if not todo:
            return
        t0 = time.perf_counter()
        ks = [min(WINDOW, ao_tasks.count_tokens(self.tokenizer, t)) for t, _ in todo]
        vecs = extract_in_batches(self.model, self.tokenizer, [t for t, _ in todo], [layer for _, layer in todo], ks,
                                  self.context_format, 32)
        for (t, layer), v in zip(todo, vecs, strict=True):
            self.store[self.key(t, layer)] = v.float().contiguous()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.store, str(self.path))
        print(f"  extracted {len(todo)} (text, layer) windows in {time.perf_counter() - t0:.0f} s", flush=True)

    def vectors(self, items) -> list[torch.Tensor]:
        layers = [layer_for_percent(num_layers(self.model), it.layer_percent) for it in items]
        self.ensure(zip([it.text for it in items], layers))
        out = []
        for it, layer in zip(items, layers, strict=True):
            v = self.store[self.key(it.text, layer)]
            n = v.shape[0]
            assert it.k + it.offset <= n, f"window {it.k}+{it.offset} exceeds the {n} cached positions"
            window = v[n - it.k - it.offset:n - it.offset]
            out.append(window - self.means[layer] if layer in self.means else window)
        return out


def probe(cache: SliceCache, train, held, percent: int) -> dict[str, float]:
    """Per family: logistic regression on the mean of the last 5 vectors (layer `percent`), train -> held-out."""
    layer = layer_for_percent(num_layers(cache.model), percent)
    cache.ensure([(ex.context, layer) for ex in train + held])

    def x(exs):
        return torch.stack([cache.store[cache.key(ex.context, layer)][-5:].mean(0) for ex in exs])

    out = {}
    for fam in sorted({f for ex in held for f, _ in ex.labels}):
        tr = [ex for ex in train if fam in ex.label_map]
        te = [ex for ex in held if fam in ex.label_map]
        classes = sorted({ex.label_map[fam] for ex in tr})
        if len(classes) < 2 or not te:
            continue
        xtr, xte = x(tr), x(te)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        ytr = torch.tensor([classes.index(ex.label_map[fam]) for ex in tr])
        torch.manual_seed(0)
        lin = torch.nn.Linear(xtr.shape[1], len(classes))
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
            opt.step()
        pred = lin(xte).argmax(1).tolist()
        out[fam] = sum(classes[p] == ex.label_map[fam] for p, ex in zip(pred, te, strict=True)) / len(te)
    return out


def run_variant(name, overrides, args, cache, train, held_ex, tokenizer):
    """Train one variant for args.steps on cached vectors; rows of the cheap check at each eval step."""
    cfg = load_config(args.config, [*BASE, *overrides, f"ao_sft.eval_every={args.eval_every}",
                                  f"ao_sft.num_examples={args.steps * 16}", "ao_sft.epochs=1", "ao_sft.batch_size=16"])
    seed_everything(cfg.seed)
    model, _ = load_oracle(cfg)
    cache.model = model
    first = args.open_first
    phases = [(cfg, args.steps, train)]
    if first:  # curriculum: open questions only for the first `first` steps, then the variant's own mix
        phases = [(replace(cfg, ao_sft=replace(cfg.ao_sft, open_frac=1.0)), first, train), (cfg, args.steps, train)]
    if args.yes_no_first:  # curriculum: yes/no from the matching question texts only, then from all of them
        pattern, until = args.yes_no_first
        narrow = yes_no_matching(train, pattern)
        phases = [(cfg, until, narrow)] + ([(cfg, args.steps, train)] if until < args.steps else [])
    draws = []
    for i, (phase_cfg, end, examples) in enumerate(phases):
        n = (end - (phases[i - 1][1] if i else 0)) * 16
        items = ao_sft.draw_items(phase_cfg, examples, tokenizer, n, cfg.seed + i, context_prediction=True)
        draws.append((phase_cfg, items, cache.vectors(items)))
    held = ao_sft.prepare_heldout(cfg, tokenizer, held_ex, train + held_ex, lambda its, _: cache.vectors(its))
    optimizer, scheduler = optimizer_and_scheduler(model, cfg.ao_sft.lr, 0.0, cfg.ao_sft.warmup_steps, "cosine",
                                                   args.steps)
    points, eval_s = {}, [0.0]

    def on_curve(step):
        t = time.perf_counter()
        rows = ao_sft.curve_point(cfg, model, tokenizer, held, step)
        points[step] = ao_heldout.curve_summary(rows)
        eval_s[0] += time.perf_counter() - t
        print(f"  {name} step {step}: {fmt(points[step])}", flush=True)
        print(f"  {name} step {step} by kind: {fmt_by_kind(rows)}", flush=True)
        print(f"  {name} step {step} yes/no AUROC of Yes-No: {fmt_separation(rows)}", flush=True)
        return points[step]

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        start = 0
        for (phase_cfg, items, vectors), (_, end, _) in zip(draws, phases):
            ao_sft.train_steps(phase_cfg, model, tokenizer, items, vectors, optimizer, scheduler, start=start,
                               total=end, run_dir=Path(tmp), sinks=NullSink(), on_curve=on_curve, trainer_state={})
            if end != args.steps and args.eval_every and end % args.eval_every == 0:
                on_curve(end)  # train_steps leaves its last step to the caller
            start = end
    train_s = time.perf_counter() - t0 - eval_s[0]
    on_curve(args.steps)
    return points, train_s / args.steps


def yes_no_matching(examples, pattern: str):
    """`examples` keeping every open question but only the yes/no questions whose text matches `pattern`."""
    rx = re.compile(pattern)

    def keep(qa) -> bool:
        return not is_yes_no_question(qa.question, qa.reference) or bool(rx.search(qa.question))

    kept = [replace(ex, qas=tuple(qa for qa in ex.qas if keep(qa))) for ex in examples]
    kept = [ex for ex in kept if ex.qas]
    if not any(is_yes_no_question(qa.question, qa.reference) for ex in kept for qa in ex.qas):
        raise SystemExit(f"--yes-no-first: no yes/no question matches {pattern!r}")
    return kept


def parse_yes_no_first(value: str) -> tuple[str, int]:
    """'REGEX:N' -> (REGEX, N)."""
    pattern, sep, steps = value.rpartition(":")
    if not sep or not pattern or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected REGEX:N, N >= 1 steps (e.g. 'positive\\?:80')")
    return pattern, int(steps)


def fmt_by_kind(rows) -> str:
    """Real/counterfactual accuracy per (kind, family), yes/no balanced over its references."""
    cells: dict = {}
    for r in rows:
        key = (r["kind"], r["family"], r["control"])
        cells.setdefault(key, {}).setdefault(str(r.get("reference")).lower() if r["kind"] == "yes_no" else "",
                                             []).append(r["correct"])
    out = []
    for kind, fam in sorted({(k, f) for k, f, _ in cells}):
        acc = {c: sum(sum(h) / len(h) for h in cells[(kind, fam, c)].values()) / len(cells[(kind, fam, c)])
               for c in ("real", "counterfactual") if (kind, fam, c) in cells}
        out.append(f"{kind}:{fam} {acc.get('real', float('nan')):.2f}/{acc.get('counterfactual', float('nan')):.2f}")
    return " ".join(out)


def fmt_separation(rows) -> str:
    """Per family, the AUROC of the real yes/no items' Yes - No first-token logprob against the reference: does
    the answer follow the vectors at all, whatever the global Yes/No bias that the argmax accuracy also reads."""
    by_family: dict = {}
    for r in rows:
        if r["kind"] == "yes_no" and r["control"] == "real":
            by_family.setdefault(r["family"], []).append((r["scores"]["Yes"] - r["scores"]["No"],
                                                          str(r["reference"]).lower() == "yes"))
    parts = []
    for fam, pairs in sorted(by_family.items()):
        a = auroc([m for m, _ in pairs], [y for _, y in pairs])
        parts.append(f"{fam} {'-' if a is None else f'{a:.2f}'}")
    return " ".join(parts)


def fmt(point) -> str:
    real, cf = point.get("real", {}), point.get("counterfactual", {})
    return " ".join(f"{g.removeprefix('family:')} {real[g]:.2f}/{cf.get(g, float('nan')):.2f}" for g in sorted(real))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="mix")
    p.add_argument("--config", default="smollm2", help="tiny for a smoke test")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--heldout", default="builtin_heldout")
    p.add_argument("--cache", default=str(ROOT / "runs" / "ao_design" / "slices.safetensors"))
    p.add_argument("--probe", action="store_true", help="print the probe ceilings and stop")
    p.add_argument("--center", action="store_true",
                   help="subtract the training contexts' mean vector per layer before the injection")
    p.add_argument("--english-only", action="store_true",
                   help="train on the English contexts only (no language label, or English)")
    p.add_argument("--families", default=None,
                   help="train on these families' questions only (comma-separated, e.g. topic,sentiment)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more config override for every variant (repeatable), e.g. data.layer_percents=[75]")
    p.add_argument("--open-first", type=int, default=0, metavar="N",
                   help="curriculum: the first N steps draw open questions only, the rest the variant's mix")
    p.add_argument("--yes-no-first", type=parse_yes_no_first, default=None, metavar="REGEX:N",
                   help="curriculum: the first N steps draw yes/no items only from the question texts matching "
                        "REGEX (open questions unchanged), the rest from all; N = --steps for the whole run")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.yes_no_first and (args.open_first or args.yes_no_first[1] > args.steps):
        p.error("--yes-no-first REGEX:N needs N <= --steps and no --open-first")
    if not 0 <= args.open_first < args.steps:
        p.error(f"--open-first {args.open_first} must be at least 0 and below --steps {args.steps}")
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k}: {' '.join(v) or '(base)'}")
        print("base:", " ".join(BASE))
        return 0
    cfg = load_config(args.config, BASE)
    model, tokenizer = load_oracle(cfg)
    train = load_examples(cfg.data)
    held_ex = with_open_questions(load_examples(replace(cfg.data, source=args.heldout)), train)
    texts = {ex.context for ex in held_ex}
    train = [ex for ex in train if ex.context not in texts]
    if args.english_only:
        train = [ex for ex in train if ex.label_map.get("language", "English") == "English"]
    if args.families:
        keep = set(args.families.split(","))
        train = [replace(ex, qas=tuple(qa for qa in ex.qas if qa.family in keep)) for ex in train]
        train = [ex for ex in train if ex.qas]
    cache = SliceCache(model, tokenizer, cfg.data.context_format, Path(args.cache))
    if args.probe:
        for percent in (25, 50, 75):
            print(f"probe layer {percent} %: " + " ".join(f"{f} {a:.2f}" for f, a in probe(cache, train, held_ex,
                                                                                            percent).items()))
        return 0
    if args.center:
        cache.center(sorted({ex.context for ex in train}),
                     [layer_for_percent(num_layers(model), pc) for pc in (25, 50, 75)])
    rows = []
    for name in args.variants.split(","):
        points, s_per_step = run_variant(name, [*VARIANTS[name], *args.set], args, cache, train, held_ex, tokenizer)
        rows.append((name, points, s_per_step))
    print("\n| variant | steps | s/step | held-out real/counterfactual at each eval step (cheap check) |\n|---|---|---|---|")
    for name, points, sps in rows:
        for step, point in sorted(points.items()):
            print(f"| {name} | {step} | {sps:.2f} | {fmt(point)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
