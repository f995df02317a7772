"""The eval recipe: one subject extraction per eval, the shuffled-activation control, grading, recomputable numbers."""

import dataclasses
import json

import pytest
import torch

from grpo_ao.config import load_config
from grpo_ao.data import Task
from grpo_ao.errors import GrpoAoError
from grpo_ao.recipes import eval_report, evaluate


def _task(example, reference, layer_percent=50, k=2, question="Is it about food?"):
    return Task(example, f"context {example}", question, reference, "topic", layer_percent, k)


def _eval_cfg(tmp_path, *overrides):
    return load_config("tiny", [f"logging.output_dir={tmp_path}", "logging.progress=false", *overrides])


def test_shuffled_donors_come_from_other_examples_with_another_answer():
    tasks = [_task(0, "Yes"), _task(0, "No"), _task(1, "yes."), _task(2, "No", 25, 3), _task(3, "No"),
             _task(4, "Yes", 25, 3)]
    donors = evaluate.shuffled_donors(tasks, seed=0)
    assert len(donors) == len(tasks)
    for i, d in enumerate(donors):
        assert d != i and tasks[d].example_index != tasks[i].example_index
        assert tasks[d].reference.lower().rstrip(".") != tasks[i].reference.lower().rstrip(".")
    # item 1 ("No", 50 %, K=2, example 0) may take 2 ("yes.", 50 %, 2) or 5 ("Yes", 25 %, 3): the same layer and
    # K win, so the prompt is token-identical. Item 3 ("No", 25 %, 3) has exactly one such donor: item 5.
    assert donors[1] == 2 and donors[3] == 5
    # item 0 ("Yes", 50 %, 2) has the same-layer-and-K donors 1 (same example: excluded) and 4 → 4
    assert donors[0] == 4
    assert evaluate.shuffled_donors(tasks, seed=0) == donors, "fixed for a seed"


def test_shuffled_donors_spread_use_evenly_over_equal_candidates():
    # 4 "Yes" items and 2 "No" items, all the same layer and K: each "No" item gives to 2 "Yes" items
    tasks = [_task(i, "Yes") for i in range(4)] + [_task(4, "No"), _task(5, "No")]
    donors = evaluate.shuffled_donors(tasks, seed=3)
    assert sorted(donors[:4]) == [4, 4, 5, 5]


def test_shuffled_donors_without_reference_take_any_other_example():
    tasks = [_task(0, None), _task(0, None), _task(1, None)]
    donors = evaluate.shuffled_donors(tasks, seed=0)
    assert donors == [2, 2, donors[2]] and donors[2] in (0, 1)


def test_shuffled_donors_refuse_when_every_answer_is_the_same():
    with pytest.raises(GrpoAoError, match="no donor for item"):
        evaluate.shuffled_donors([_task(0, "Yes"), _task(1, "yes")], seed=0)


def _answer_from_labels(examples):
    """question -> (family, the one label value whose contexts answer it "Yes"), from every row of the eval
    set: the built-in yes/no questions ask "is this context's <family> <value>?"."""
    yes = {}
    for ex in examples:
        for qa in ex.qas:
            if qa.reference == "Yes":
                yes.setdefault(qa.question, set()).add((qa.family, ex.label_map[qa.family]))
    assert all(len(v) == 1 for v in yes.values()), "one label value per question"
    return {q: next(iter(v)) for q, v in yes.items()}


def _check_donors_answer_differently(tasks, labels, donors, examples):
    """Each donor's context, by its labels, answers the item's question unlike the item's reference."""
    asks = _answer_from_labels(examples)
    for i, c in enumerate(donors):
        if c is None:
            continue
        family, value = asks[tasks[i].question]
        assert tasks[c].example_index != tasks[i].example_index and family in labels[c]
        donor_answer = "Yes" if labels[c][family] == value else "No"
        assert donor_answer != tasks[i].reference, (tasks[i], tasks[c], labels[c])


def test_counterfactual_donors_answer_the_question_differently_by_the_labels(tmp_path, tokenizer):
    from grpo_ao.data import load_examples

    cfg = _eval_cfg(tmp_path, "eval.num_examples=216")
    tasks, labels = evaluate.eval_items(cfg, tokenizer)
    donors = evaluate.counterfactual_donors(tasks, labels, cfg.eval.data.seed)
    assert len(tasks) == 216 and all(labels), "the built-in eval set: every context labelled"
    assert sum(d is not None for d in donors) >= 200, "almost every built-in item has a counterfactual donor"
    assert {tasks[i].family for i, d in enumerate(donors) if d is not None} == {t.family for t in tasks}
    _check_donors_answer_differently(tasks, labels, donors, load_examples(cfg.eval.data))
    same = sum((tasks[d].layer_percent, tasks[d].num_positions) == (t.layer_percent, t.num_positions)
               for t, d in zip(tasks, donors) if d is not None)
    assert same > 0.5 * len(tasks), "same-layout donors are preferred"
    assert evaluate.counterfactual_donors(tasks, labels, cfg.eval.data.seed) == donors, "fixed for a seed"


def test_counterfactual_donors_without_labels_come_only_from_the_data(tmp_path, tokenizer):
    # without labels, a donor is only known where the data asks the donor's context the same question with
    # another reference
    cfg = _eval_cfg(tmp_path, "eval.num_examples=64")
    tasks, labels = evaluate.eval_items(cfg, tokenizer)
    donors = evaluate.counterfactual_donors(tasks, [{}] * len(tasks), cfg.eval.data.seed)
    asked = {(t.example_index, t.question): t.reference for t in tasks}
    assert 0 < sum(d is not None for d in donors) < sum(d is not None for d in evaluate.counterfactual_donors(
        tasks, labels, cfg.eval.data.seed)), "labels add donors"
    for t, d in zip(tasks, donors):
        assert d is None or asked[(tasks[d].example_index, t.question)] not in (None, t.reference)


def test_adapter_spec_none_is_the_bare_model_and_base_the_configs_adapter():
    cfg = load_config("tiny", ["model.adapter=org/start"])
    assert evaluate.parse_adapters(cfg, ["none", "start=none", "base"]) == [
        ("none", None), ("start", None), ("base", "org/start")]
    with pytest.raises(GrpoAoError, match="name more than one adapter"):
        evaluate.parse_adapters(cfg, ["none", "none=org/x"])


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory):
    """A saved LoRA adapter with random (non-zero) weights on the tiny model: loads like a trained one, in ms."""
    from peft import LoraConfig, get_peft_model

    from grpo_ao.models import build_tiny_model_and_tokenizer

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model_and_tokenizer(seed=0)[0],
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False))
    path = tmp_path_factory.mktemp("random_adapter") / "adapter"
    model.save_pretrained(path)
    return str(path)


def test_oracle_with_no_adapter_is_the_base_model_even_after_an_adapter_was_loaded(tiny_model, tiny,
                                                                                   random_adapter):
    reference_model, tokenizer = tiny
    ids = tokenizer(["The soup was salty."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        bare = reference_model(input_ids=ids).logits
        state: dict = {}
        with evaluate.oracle_with(tiny_model, state, "lora", random_adapter) as model:
            tuned = model(input_ids=ids).logits
        with evaluate.oracle_with(tiny_model, state, "none", None) as model:
            off = model(input_ids=ids).logits
    assert not torch.allclose(tuned, bare), "the adapter must change the logits"
    torch.testing.assert_close(off, bare)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _recomputed(records):
    """accuracy, parse rate, Brier/ECE/AUROC of a records file, from the calibration formulas."""
    from grpo_ao.calibration import auroc, brier_score, expected_calibration_error

    parsed = [r for r in records if r["parse_ok"]]
    known = [r for r in parsed if r["correct"] is not None]
    conf, y = [r["confidence"] / 10 for r in known], [float(r["correct"]) for r in known]
    graded = [float(r["correct"]) for r in records if r["correct"] is not None]  # parse failures too
    return {"n": len(records), "parse_rate": len(parsed) / len(records),
            "accuracy": sum(graded) / len(graded) if graded else None, "brier_correct": brier_score(conf, y),
            "ece_correct": expected_calibration_error(conf, y), "auroc_correct": auroc(conf, [v == 1 for v in y])}


def _scripted_answers(real_generate):
    """The real generation, then its texts replaced by parseable answers: "Yes" when the injected vectors'
    thousandths of their absolute sum are odd (so the answer depends on the activations, pseudo-randomly), X =
    first sampled id mod 11 (so it depends on the model and adapter). The tiny random oracle never writes the
    format by itself."""

    def generate(model, tokenizer, inputs, *args, **kwargs):
        rollouts = real_generate(model, tokenizer, inputs, *args, **kwargs)
        answers = ["Yes" if int(v.abs().sum() * 1e3) % 2 else "No" for v in inputs.vectors]
        texts = [f"[epistemic status: {int(ids[0]) % 11}] {a}, I think."
                 for ids, a in zip(rollouts.completion_ids, answers, strict=True)]
        return dataclasses.replace(rollouts, texts=texts)

    return generate


def test_eval_numbers_equal_a_recomputation_from_the_records_and_extraction_runs_once(tmp_path, monkeypatch,
                                                                                      tokenizer, random_adapter):
    import grpo_ao.rollout as rollout
    import grpo_ao.steering as steering
    from grpo_ao.data import load_examples
    from grpo_ao.grading import grade

    extracted = []
    real_extract = steering.extract_activations
    monkeypatch.setattr(steering, "extract_activations",
                        lambda model, tok, contexts, *a, **k: extracted.append(len(contexts)) or
                        real_extract(model, tok, contexts, *a, **k))
    monkeypatch.setattr(rollout, "extract_activations", lambda *a, **k: pytest.fail("re-extracted per batch"))
    monkeypatch.setattr(evaluate, "generate_rollouts", _scripted_answers(evaluate.generate_rollouts))
    cfg = _eval_cfg(tmp_path, "eval.num_examples=12", "eval.batch_size=5", "eval.max_new_tokens=2")
    report = evaluate.run(cfg, ["none", f"lora={random_adapter}"])

    tasks, labels = evaluate.eval_items(cfg, tokenizer)
    distinct = {(t.context, t.layer_percent, t.num_positions) for t in tasks}
    cf_donors = evaluate.counterfactual_donors(tasks, labels, cfg.eval.data.seed)
    cf_new = {(tasks[c].context, t.layer_percent, t.num_positions) for t, c in zip(tasks, cf_donors)
              if c is not None} - distinct  # (K is never capped on these items: checked below)
    assert cf_new, "the test needs a donor of another layout, re-read at the item's own layer and K"
    assert sum(extracted) == len(distinct) + len(cf_new), "each (context, layer, K) once per eval"
    assert len(extracted) == -(-len(distinct) // 5) + -(-len(cf_new) // 5), "batched: real, then counterfactual"
    donors = evaluate.shuffled_donors(tasks, cfg.eval.data.seed)
    assert report["num_items"] == 12 and list(report["adapters"]) == ["none", "lora"]
    assert report["reward_target"] == cfg.reward.target == "informativeness"
    for label, result in report["adapters"].items():
        shuffled = result["controls"]["shuffled"]
        records, control = _read(tmp_path / result["records"]), _read(tmp_path / shuffled["records"])
        assert shuffled["records"] == f"eval_records_{label}_shuffled.jsonl"
        assert [r["donor"] for r in records] == list(range(12)) and [r["donor"] for r in control] == donors
        assert set(shuffled["summary"]) == set(result["summary"])
        for summary, rows in ((result["summary"], records), (shuffled["summary"], control)):
            assert 0 < summary["accuracy"] < 1 and summary["parse_rate"] == 1, "the test needs a mix of grades"
            for key, value in _recomputed(rows).items():
                assert summary[key] == pytest.approx(value, abs=1e-12), (label, key)
            for r in rows:  # one grading rule: correct iff the grade is True
                assert r["correct"] == (grade(r["question"], r["reference"], r["answer"]).correct is True)
        assert shuffled["accuracy_delta"] == pytest.approx(result["summary"]["accuracy"]
                                                           - shuffled["summary"]["accuracy"], abs=1e-12)
        assert result["summary"]["ece_target"] == result["summary"]["ece_info"]
        cf = result["controls"]["counterfactual"]
        cf_records = _read(tmp_path / cf["records"])
        assert cf["records"] == f"eval_records_{label}_counterfactual.jsonl"
        assert set(cf["summary"]) == set(result["summary"])
        with_donor = [i for i, c in enumerate(cf_donors) if c is not None]
        assert [r["item"] for r in cf_records] == with_donor and [r["donor"] for r in cf_records] == [
            cf_donors[i] for i in with_donor]
        assert cf["summary"]["n"] == len(with_donor) and cf["n_without_donor"] == 12 - len(with_donor)
        assert 0 < cf["summary"]["accuracy"] < 1, "the test needs a mix of grades"
        for key, value in _recomputed(cf_records).items():
            assert cf["summary"][key] == pytest.approx(value, abs=1e-12), (label, "counterfactual", key)
        assert cf["accuracy_delta"] == pytest.approx(result["summary"]["accuracy"] - cf["summary"]["accuracy"],
                                                     abs=1e-12)
        assert cf["k_capped"] == 0
        from_records = [None] * len(tasks)
        for r in cf_records:
            from_records[r["item"]] = r["donor"]
        _check_donors_answer_differently(tasks, labels, from_records, load_examples(cfg.eval.data))
        for r in cf_records:  # the item's own question, layer and K; the donor's context
            own = records[r["item"]]
            assert (r["question"], r["reference"], r["layer_percent"], r["k"]) == (
                own["question"], own["reference"], own["layer_percent"], own["k"])
            assert r["donor_context"] == tasks[r["donor"]].context != tasks[r["item"]].context
        row = next(line for line in (tmp_path / "eval.md").read_text().splitlines() if line.startswith(f"| {label} |"))
        cells = dict(zip([c for c, _ in eval_report.TABLE_COLUMNS],
                         [c.strip() for c in row.strip("|").split("|")][1:]))
        assert float(cells["shuffled acc"]) == pytest.approx(shuffled["summary"]["accuracy"], abs=5e-4)
        assert float(cells["Δ acc"]) == pytest.approx(shuffled["accuracy_delta"], abs=5e-4)
        assert float(cells["counterf. acc"]) == pytest.approx(cf["summary"]["accuracy"], abs=5e-4)
        assert float(cells["Δ acc (cf)"]) == pytest.approx(cf["accuracy_delta"], abs=5e-4)
        assert float(cells["AUROC in family"]) == pytest.approx(result["summary"]["auroc_correct_within_family"],
                                                                abs=5e-4)


def test_the_shuffled_control_injects_the_donors_activations_at_the_placeholders(tmp_path, monkeypatch, tiny):
    from grpo_ao.format import special_token_id
    from grpo_ao.models import num_layers
    from grpo_ao.steering import extract_activations, layer_for_percent

    model, tokenizer = tiny
    seen = []
    real_generate = evaluate.generate_rollouts
    monkeypatch.setattr(evaluate, "generate_rollouts", lambda m, tok, inputs, *a, **k: seen.append(inputs) or
                        real_generate(m, tok, inputs, *a, **k))
    cfg = _eval_cfg(tmp_path, "eval.num_examples=12", "eval.batch_size=12", "eval.max_new_tokens=2")
    evaluate.run(cfg, ["none"])
    assert len(seen) == 3, "one batch of real answers, one per control"
    real, control, counterfactual = seen
    tasks, labels = evaluate.eval_items(cfg, tokenizer)
    donors = evaluate.shuffled_donors(tasks, cfg.eval.data.seed)
    assert all(d != i for i, d in enumerate(donors)) and len(tasks) == 12
    qid = special_token_id(tokenizer)
    for i, d in enumerate(donors):
        item, donor = tasks[i], tasks[d]
        assert donor.example_index != item.example_index and donor.reference != item.reference
        layer = layer_for_percent(num_layers(model), donor.layer_percent)
        expected = extract_activations(model, tokenizer, [donor.context], [layer], [donor.num_positions])[0]
        torch.testing.assert_close(control.vectors[i], expected)
        assert control.layers[i] == layer
        ids = control.prompt_ids[i].tolist()
        pos = control.positions[i]
        assert len(pos) == donor.num_positions and all(ids[p] == qid for p in pos)
        assert pos == list(range(pos[0], pos[0] + len(pos))) and ids[pos[-1] + 1] != qid
        assert tokenizer.decode(ids[:pos[0]]).endswith(f"Layer: {layer}\n")
        assert item.question in tokenizer.decode(ids[pos[-1]:])
        if (donor.layer_percent, donor.num_positions) == (item.layer_percent, item.num_positions):
            unpadded = [x for x, m in zip(ids, control.prompt_mask[i].tolist()) if m]
            assert unpadded == [x for x, m in zip(real.prompt_ids[i].tolist(), real.prompt_mask[i].tolist()) if m]
    cf_donors = evaluate.counterfactual_donors(tasks, labels, cfg.eval.data.seed)
    with_donor = [i for i, c in enumerate(cf_donors) if c is not None]
    assert len(counterfactual.vectors) == len(with_donor) > 0
    relaid = 0
    for row, i in enumerate(with_donor):  # the donor's context at the item's OWN layer and K: the real prompt
        item, donor = tasks[i], tasks[cf_donors[i]]
        layer = layer_for_percent(num_layers(model), item.layer_percent)
        expected = extract_activations(model, tokenizer, [donor.context], [layer], [item.num_positions])[0]
        torch.testing.assert_close(counterfactual.vectors[row], expected)
        assert counterfactual.layers[row] == real.layers[i] == layer
        unpadded = [x for x, m in zip(counterfactual.prompt_ids[row].tolist(),
                                      counterfactual.prompt_mask[row].tolist()) if m]
        assert unpadded == [x for x, m in zip(real.prompt_ids[i].tolist(), real.prompt_mask[i].tolist()) if m]
        relaid += (donor.layer_percent, donor.num_positions) != (item.layer_percent, item.num_positions)
    assert relaid > 0, "the test needs a donor item of another layout"


def test_counterfactual_slots_read_the_donor_at_the_items_layer_and_cap_k_to_a_shorter_donor(tmp_path, tiny):
    from grpo_ao.steering import extract_activations

    model, tokenizer = tiny
    cfg = _eval_cfg(tmp_path, "eval.batch_size=2")
    long_ctx, short_ctx = "The soup was salty and the bread was stale.", "Hi"
    n_short = len(tokenizer(short_ctx, add_special_tokens=False)["input_ids"])
    assert n_short < 5
    tasks = [Task(0, long_ctx, "Is it about food?", "Yes", "topic", 75, 5),
             Task(1, short_ctx, "Is it about food?", "No", "topic", 25, 1),
             Task(2, "Nothing to see", "Is it about food?", None, "topic", 50, 2)]
    cache: dict = {}
    items, shown = evaluate.counterfactual_slots(cfg, model, tokenizer, tasks, [2, 0, 1], [1, 0, None], cache)
    assert items == [0, 1] and shown.layer_percents == [75, 25] and shown.layers == [2, 0]
    assert shown.ks == [n_short, 1], "item 0's K = 5 capped to the donor's tokens; item 1 keeps its own K"
    for row, (ctx, layer, k) in enumerate([(short_ctx, 2, n_short), (long_ctx, 0, 1)]):
        expected = extract_activations(model, tokenizer, [ctx], [layer], [k], cfg.eval.data.context_format)[0]
        torch.testing.assert_close(shown.vectors[row], expected)
    assert set(cache) == {(short_ctx, 2, n_short), (long_ctx, 0, 1)}
