"""AO pretraining's held-out checks: what the oracle answers about held-out contexts, real vs the controls.

Two checks, both on items of contexts never trained on, in the base-oracle layout (no system prompt):

- **cheap** (`score_candidates`, the learning curve): no generation. A yes/no item predicts the larger of
  the "Yes" and "No" first-token logprobs; an open item the candidate answer (every reference the data gives
  its question, `ao_tasks.answer_candidates`) with the largest teacher-forced logprob of its tokens plus
  end-of-turn. `curve_summary` turns the written rows into accuracies; the recipe logs exactly those.
- **greedy** (`greedy_answers`, before and after training): a greedy answer graded by `grading.grade`, the
  rule every stage uses; `accuracy_report` per kind, family and question phrasing.

The controls: item i answered with the vectors of another context, either the shuffled donor (another
item's vectors, read at that item's own layer and K) or the counterfactual item (a context whose answer to
i's question differs, read at i's own layer and K: `ao_tasks.counterfactual_items`). A reader scores ~0 on
the counterfactual control, a guesser ~0.5 on balanced yes/no.

We deliberately do not calibrate or length-normalise the candidate scores: the argmax of the oracle's own
sequence logprob is the answer greedy decoding would most likely give among the candidates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from grpo_ao.ao_tasks import AoItem
from grpo_ao.controls import answer_key
from grpo_ao.distributed import gather_objects, place, shard, unshard
from grpo_ao.format import left_pad, render_oracle_prompt
from grpo_ao.grading import grade
from grpo_ao.models import num_layers
from grpo_ao.rollout import (
    OracleInputs,
    OracleSpec,
    SamplingConfig,
    completion_logprobs,
    generate_rollouts,
    subject_layers,
    teacher_forcing_rollouts,
)
from grpo_ao.steering import layer_for_percent

YES_NO_CANDIDATES = ("Yes", "No")


def prompt_for(tokenizer: Any, model: Any, item: AoItem, layer_percent: int | None = None, k: int | None = None):
    """The base-oracle prompt for `item`, optionally for another item's layer and K: rendered here (the
    activations are cached), in the layout of `oracle_spec(cfg).without_system_prompt()`, as generation uses."""
    layer = layer_for_percent(num_layers(model), item.layer_percent if layer_percent is None else layer_percent)
    return render_oracle_prompt(tokenizer, item.question, layer, item.k if k is None else k, None, mode="none")


def candidates_of(item: AoItem, candidates: dict[str, list[str]]) -> list[str]:
    """The answers the cheap check compares for `item`: Yes/No, or its open question's candidates ([] if < 2)."""
    if item.kind == "yes_no":
        return list(YES_NO_CANDIDATES)
    found = candidates.get(item.question, [])
    return found if len(found) >= 2 else []


def score_candidates(model: Any, tokenizer: Any, items: Sequence[AoItem], vectors: Sequence[torch.Tensor],
                     candidates: dict[str, list[str]], spec: OracleSpec, batch_size: int) -> list[dict[str, float]]:
    """Per item, {candidate: score}: a yes/no item's "Yes"/"No" first-token logprob, an open item's candidate
    tokens + end-of-turn summed logprob (teacher-forced, injection on, eval mode, no grad). {} when the item has
    no candidates. Rows are sharded over the ranks and gathered.

        score(c) = sum_t m_t * log p(c_t | prompt, c_<t)      m = first token only for yes/no
    """
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [(i, c) for i, it in enumerate(items) for c in candidates_of(it, candidates)]
    mine = shard(rows, place().rank, place().world_size)
    was_training = model.training
    model.eval()
    scores: list[float] = []
    for s in range(0, len(mine), batch_size):
        chunk = mine[s:s + batch_size]
        targets = []
        for i, c in chunk:
            ids = tokenizer(c, add_special_tokens=False)["input_ids"]
            targets.append(ids[:1] if items[i].kind == "yes_no" else ids + [eot])
        batch = teacher_forcing_rollouts([prompt_for(tokenizer, model, items[i]) for i, _ in chunk], targets,
                                         [vectors[i] for i, _ in chunk], [c for _, c in chunk], tokenizer.pad_token_id)
        logprobs = completion_logprobs(model, batch, 1.0, spec=spec)  # [n, T]
        scores += (logprobs * batch.completion_mask.to(logprobs)).sum(dim=1).tolist()  # [n]
    model.train(was_training)
    out: list[dict[str, float]] = [{} for _ in items]
    for (i, c), v in zip(rows, unshard(gather_objects(scores)), strict=True):
        out[i][c] = v
    return out


def curve_rows(step: int, control: str, items: Sequence[AoItem | None], scores: Sequence[dict[str, float] | None]
               ) -> list[dict[str, Any]]:
    """The written record of one cheap check: one row per scored item (index, kind, family, phrasing,
    reference, scores, predicted = argmax, correct)."""
    rows = []
    for i, (it, sc) in enumerate(zip(items, scores, strict=True)):
        if it is None or not sc:
            continue
        predicted = max(sc, key=sc.get)
        rows.append({"step": step, "control": control, "item": i, "kind": it.kind, "family": it.family,
                     "phrasing": it.phrasing, "reference": it.reference, "scores": sc, "predicted": predicted,
                     "correct": answer_key(predicted) == answer_key(it.reference)})
    return rows


def curve_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Accuracy per (control, group) over the rows of ONE step: group = "yes_no", "open" or "family:<name>"
    (yes/no and open items of the family together), and "yes_no_balanced": the mean of the yes/no accuracy on
    items whose reference is Yes and on those whose reference is No (an oracle that always answers the same
    scores 0.5 however skewed the held-out answers are; the plain yes/no accuracy would give it the majority share).

    >>> curve_summary([{"control": "real", "kind": "yes_no", "family": "topic", "correct": True, "reference": "No"},
    ...                {"control": "real", "kind": "yes_no", "family": "topic", "correct": True, "reference": "No"},
    ...                {"control": "real", "kind": "yes_no", "family": "topic", "correct": False, "reference": "Yes"}
    ...                ])["real"]
    {'yes_no': 0.6666666666666666, 'family:topic': 0.6666666666666666, 'yes_no_balanced': 0.5}
    """
    hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
    by_reference: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        hits[(r["control"], r["kind"])].append(r["correct"])
        hits[(r["control"], f"family:{r['family']}")].append(r["correct"])
        if r["kind"] == "yes_no" and r.get("reference") is not None:
            by_reference[r["control"]][str(r["reference"]).strip().lower()].append(r["correct"])
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (control, group), h in hits.items():
        out[control][group] = sum(h) / len(h)
    for control, refs in by_reference.items():
        out[control]["yes_no_balanced"] = sum(sum(h) / len(h) for h in refs.values()) / len(refs)
    return dict(out)


def greedy_answers(model: Any, tokenizer: Any, items: Sequence[AoItem], vectors: Sequence[torch.Tensor],
                   spec: OracleSpec, max_new_tokens: int, batch_size: int,
                   layouts: Sequence[AoItem] | None = None) -> list[str]:
    """Greedy answers of item i's question from vectors[i], its prompt rendered at layouts[i]'s layer and K
    (default: item i's own). Each rank answers its share; gathered in item order on every rank."""
    sampling = SamplingConfig(num_generations=1, max_new_tokens=max_new_tokens, greedy=True)
    layouts = items if layouts is None else layouts
    mine = shard(range(len(items)), place().rank, place().world_size)
    answers: list[str] = []
    for s in range(0, len(mine), batch_size):
        idx = mine[s:s + batch_size]
        prompts = [prompt_for(tokenizer, model, items[i], layouts[i].layer_percent, layouts[i].k) for i in idx]
        prompt_ids, prompt_mask, positions = left_pad(prompts, tokenizer.pad_token_id)
        layers = subject_layers(model, [layouts[i] for i in idx])
        inputs = OracleInputs(prompt_ids, prompt_mask, positions, [vectors[i] for i in idx], layers)
        answers += [t.strip() for t in generate_rollouts(model, tokenizer, inputs, sampling, spec=spec).texts]
    return unshard(gather_objects(answers))


def accuracy_report(items: Sequence[AoItem | None], answers: Sequence[str | None]) -> dict[str, Any]:
    """`grade` accuracy over the items that have an answer (None items/answers are skipped): overall, yes/no,
    open, per family and per question phrasing ("seen"/"unseen", where tagged)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for it, a in zip(items, answers, strict=True):
        if it is None or a is None:
            continue
        ok = grade(it.question, it.reference, a).correct is True
        for g in ("all", it.kind, f"family:{it.family}", *([f"phrasing:{it.phrasing}"] if it.phrasing else [])):
            groups[g].append(ok)
    acc = {g: sum(h) / len(h) for g, h in groups.items()}
    return {"accuracy": acc.get("all"), "accuracy_yes_no": acc.get("yes_no"), "accuracy_open": acc.get("open"),
            "n": len(groups["all"]), "n_yes_no": len(groups.get("yes_no", [])),
            "per_family": {g[7:]: v for g, v in sorted(acc.items()) if g.startswith("family:")},
            "per_phrasing": {g[9:]: v for g, v in sorted(acc.items()) if g.startswith("phrasing:")}}
