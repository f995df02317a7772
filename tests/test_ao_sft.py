"""AO pretraining (recipes/ao_sft.py): item drawing, context prediction targets, the held-out split, a tiny run."""

import json
import random
from collections import Counter
from dataclasses import replace

import pytest

from grpo_ao import ao_tasks
from grpo_ao.config import load_config
from grpo_ao.data import load_examples, split_examples
from grpo_ao.recipes import ao_sft


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["ao_sft.num_examples=24", "ao_sft.heldout_examples=12", "ao_sft.heldout_contexts=20",
                                "ao_sft.epochs=1", "ao_sft.batch_size=8", "logging.progress=false",
                                "logging.checkpoint_every=2", "eval.batch_size=12"])


def test_split_examples_never_shares_a_context_between_train_and_heldout(cfg):
    examples = load_examples(cfg.data)
    train, held = split_examples(examples, 20, seed=0)
    assert len(held) == 20 and len(train) + len(held) <= len(examples)
    assert not {ex.context for ex in train} & {ex.context for ex in held}
    assert split_examples(examples, 20, seed=0)[1] == held, "seeded"


def test_context_prediction_item_targets_the_tokens_next_to_the_read_window(cfg, tokenizer):
    examples = load_examples(cfg.data)
    rng = random.Random(0)
    n = cfg.ao_sft.context_prediction_tokens
    seen = set()
    for ex in examples[:40]:
        item = ao_tasks.context_prediction_item(ex, rng, cfg.data, cfg.ao_sft, tokenizer)
        if item is None:
            continue
        seen.add(item.kind)
        ids = tokenizer(ex.context, add_special_tokens=False)["input_ids"]
        prefix = tokenizer(item.text, add_special_tokens=False)["input_ids"]
        assert ids[:len(prefix)] == prefix, "the subject reads a prefix of the text, token for token"
        end = len(prefix)
        span = ids[end:end + n] if item.kind == "next" else ids[end - item.k - n:end - item.k]
        assert item.target == tokenizer.decode(span).strip()
        assert str(n) in item.question and item.reference is None
        assert cfg.data.min_positions <= item.k <= cfg.data.max_positions
    assert seen == {"next", "previous"}


def test_draw_items_mixes_the_kinds_in_the_configured_shares(cfg, tokenizer):
    examples = load_examples(cfg.data)
    items = ao_sft.draw_items(cfg, examples, tokenizer, 40, seed=0, context_prediction=True)
    assert len(items) == 40
    want = ao_tasks.kind_counts(40, cfg.ao_sft, context_prediction=True)
    assert want == {"yes_no": 40 - 10 - 16, "open": 16, "context": 10}  # 0.25 and 0.4 of 40
    assert sum(it.kind in ("next", "previous") for it in items) == want["context"]
    assert sum(it.kind == "open" for it in items) == want["open"]
    assert sum(it.kind == "yes_no" for it in items) == want["yes_no"]
    for it in items:
        if it.kind in ("yes_no", "open"):
            assert it.target == it.reference and it.reference is not None and it.offset == 0
            ex = next(ex for ex in examples if ex.context == it.text)
            assert any(qa.question == it.question and qa.reference == it.reference for qa in ex.qas)
            assert it.labels == ex.labels, "each item carries its context's labels"
    assert ao_sft.draw_items(cfg, examples, tokenizer, 40, seed=0, context_prediction=True) == items, "seeded"


def _yes_share(items, question):
    answers = [it.reference for it in items if it.question == question]
    return sum(a == "Yes" for a in answers) / len(answers), len(answers)


def test_balanced_yes_no_sampling_balances_every_question_and_natural_keeps_the_data_frequencies(cfg, tokenizer):
    examples = load_examples(cfg.data)
    only_yes_no = replace(cfg, ao_sft=replace(cfg.ao_sft, open_frac=0.0, context_prediction_frac=0.0))
    n = 20000
    items = ao_sft.draw_items(only_yes_no, examples, tokenizer, n, seed=0, context_prediction=False)
    assert {it.kind for it in items} == {"yes_no"}
    pools, _ = ao_tasks.question_pools(examples)
    per_question = n / len(pools)
    skewed = "Is this text about travel?"
    yes, no = len(pools[skewed]["yes"]), len(pools[skewed]["no"])
    assert yes * 5 < no, "the expanded data asks 'about travel?' mostly of other topics"
    for question in pools:
        share, got = _yes_share(items, question)
        assert abs(got - per_question) < 0.35 * per_question, (question, got)  # question texts drawn uniformly
        assert abs(share - 0.5) < 0.15, (question, share)  # ~4.4 binomial sd at ~217 draws per question
    natural = replace(only_yes_no, ao_sft=replace(only_yes_no.ao_sft, yes_no_sampling="natural"))
    items = ao_sft.draw_items(natural, examples, tokenizer, n, seed=0, context_prediction=False)
    share, _ = _yes_share(items, skewed)
    assert abs(share - yes / (yes + no)) < 0.06 and share < 0.25


def test_family_yes_no_sampling_gives_every_family_the_same_share_and_balances_each_question(cfg, tokenizer):
    examples = load_examples(cfg.data)
    only_yes_no = replace(cfg, ao_sft=replace(cfg.ao_sft, open_frac=0.0, context_prediction_frac=0.0))
    pools, _ = ao_tasks.question_pools(examples)
    family_of = {q: (pools[q]["yes"] or pools[q]["no"])[0][1].family for q in pools}
    texts = Counter(family_of.values())
    assert max(texts.values()) >= 3 * min(texts.values()), "the data's families differ in their number of wordings"
    n = 12000
    draws = {}
    for sampling, expect in (("family", {f: n / len(texts) for f in texts}),
                             ("balanced", {f: n * c / len(pools) for f, c in texts.items()})):
        run = replace(only_yes_no, ao_sft=replace(only_yes_no.ao_sft, yes_no_sampling=sampling))
        draws[sampling] = ao_sft.draw_items(run, examples, tokenizer, n, seed=0, context_prediction=False)
        got = Counter(it.family for it in draws[sampling])
        for family, want in expect.items():
            assert abs(got[family] - want) < 0.1 * want, (sampling, family, got[family], want)
    for question in pools:
        share, got = _yes_share(draws["family"], question)
        assert abs(share - 0.5) < 0.25, (question, share, got)  # ~3.5 sd at the ~50 draws of a topic text


def test_yes_no_pairs_put_both_answers_of_a_question_in_every_batch_through_the_training_order(cfg, tokenizer):
    examples = load_examples(cfg.data)
    for sampling in ("family", "balanced", "natural"):
        run = replace(cfg, ao_sft=replace(cfg.ao_sft, yes_no_pairs=True, yes_no_sampling=sampling, open_frac=0.5,
                                          context_prediction_frac=0.1))
        items = ao_sft.draw_items(run, examples, tokenizer, 401, seed=3, context_prediction=True)
        want, got = ao_tasks.kind_counts(401, run.ao_sft, True), Counter(it.kind for it in items)
        assert (got["yes_no"], got["open"], len(items)) == (want["yes_no"], want["open"], 401)
        order = ao_tasks.block_order(random.Random(0), len(items), ao_tasks.pair_unit(run.ao_sft))
        assert sorted(order) == list(range(len(items))) and order[:50] != list(range(50))
        assert [it.kind for it in items[:40]] != ["yes_no"] * 40, "the draw itself is shuffled"
        pairs = 0
        for start in range(0, len(order), run.ao_sft.batch_size):
            batch = [items[i] for i in order[start:start + run.ao_sft.batch_size]]
            yes_no = Counter((it.question, it.reference) for it in batch if it.kind == "yes_no")
            odd = [q for q in {q for q, _ in yes_no} if yes_no[(q, "Yes")] != yes_no[(q, "No")]]
            assert len(odd) <= 1, (sampling, odd)  # only the one unpaired item of an odd yes/no count
            pairs += sum(min(yes_no[(q, "Yes")], yes_no[(q, "No")]) for q in {q for q, _ in yes_no})
        assert pairs == Counter(it.kind for it in items)["yes_no"] // 2
    plain = ao_sft.draw_items(cfg, examples, tokenizer, 400, seed=3, context_prediction=True)
    assert ao_tasks.block_order(random.Random(0), 400, 1) == random.Random(0).sample(range(400), 400)
    unpaired = Counter()
    for start in range(0, 400, 8):
        batch = Counter((it.question, it.reference) for it in plain[start:start + 8] if it.kind == "yes_no")
        unpaired[sum(batch[(q, "Yes")] != batch[(q, "No")] for q, _ in batch) > 1] += 1
    assert unpaired[True] > 10, "without pairs, batches leave questions answered one way only"


def test_yes_no_pairs_need_an_even_batch_and_a_question_with_both_answers(cfg, tokenizer):
    with pytest.raises(Exception, match="batch_size=7 must be even"):
        load_config("tiny", ["ao_sft.yes_no_pairs=true", "ao_sft.batch_size=7"])
    one_sided = [replace(ex, qas=tuple(qa for qa in ex.qas if qa.reference != "No")) for ex in load_examples(cfg.data)]
    run = replace(cfg, ao_sft=replace(cfg.ao_sft, yes_no_pairs=True))
    with pytest.raises(Exception, match="yes_no_pairs=false"):
        ao_sft.draw_items(run, one_sided, tokenizer, 40, seed=0, context_prediction=False)


def test_position_jitter_and_max_positions_shape_the_training_windows_only(cfg, tokenizer):
    examples = load_examples(cfg.data)
    jit = replace(cfg, ao_sft=replace(cfg.ao_sft, position_jitter=3, max_positions=8, context_prediction_frac=0.0))
    items = ao_sft.draw_items(jit, examples, tokenizer, 400, seed=0, context_prediction=False)
    assert {it.offset for it in items} == {0, 1, 2, 3} and max(it.k for it in items) == 8
    for it in items:
        assert it.k + it.offset <= ao_tasks.count_tokens(tokenizer, it.text)
    held = ao_tasks.heldout_items(examples[:30], tokenizer, 1000, seed=1, data=jit.data)
    assert {it.offset for it in held} == {0} and max(it.k for it in held) <= jit.data.max_positions
    assert len(held) == sum(qa.reference is not None for ex in examples[:30] for qa in ex.qas), "every labelled pair"


def test_counterfactual_items_read_a_context_that_answers_the_question_differently(cfg, tokenizer):
    examples = load_examples(cfg.data)
    held = ao_tasks.heldout_items(examples[:80], tokenizer, 1000, seed=1, data=cfg.data)
    cf = ao_tasks.counterfactual_items(held, tokenizer, seed=0)
    by_text = {ex.context: ex for ex in examples}
    checked = 0
    for it, c in zip(held, cf, strict=True):
        if c is None:
            continue
        assert c.text != it.text and (c.question, c.reference, c.layer_percent, c.k) == (
            it.question, it.reference, it.layer_percent, it.k), "the donor context at the item's own layer and K"
        donor = by_text[c.text]
        assert donor.label_map[it.family] != dict(it.labels)[it.family], "the donor's label differs"
        asked = [qa.reference for qa in donor.qas if qa.question == it.question]
        assert all(a != it.reference for a in asked), "where the data asks the donor, its answer differs"
        checked += 1
    assert checked > 0.75 * len(held), (checked, len(held))  # 822 of 1000 here


def test_heldout_source_holds_out_every_context_of_that_source(cfg):
    held_cfg = replace(cfg, ao_sft=replace(cfg.ao_sft, heldout_source="builtin_eval"))
    train, held = ao_sft.split_contexts(held_cfg)
    assert len(held) == len(load_examples(replace(cfg.data, source="builtin_eval")))
    assert not {ex.context for ex in train} & {ex.context for ex in held} and train


def test_teacher_forcing_batch_has_no_system_prompt_and_ends_answers_with_end_of_turn(cfg, tiny, tokenizer):
    model, _ = tiny
    items = ao_sft.draw_items(cfg, load_examples(cfg.data), tokenizer, 6, seed=0, context_prediction=False)
    vectors = [__import__("torch").ones(it.k, model.config.hidden_size) for it in items]
    batch = ao_sft.teacher_forcing_batch(tokenizer, model, items, vectors, max_tokens=12)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, it in enumerate(items):
        prompt = tokenizer.decode(batch.prompt_ids[i][batch.prompt_mask[i].bool()])
        assert "epistemic" not in prompt and prompt.count(" ?") >= it.k
        ids = batch.completion_ids[i][batch.completion_mask[i].bool()].tolist()
        assert ids[-1] == eot and tokenizer.decode(ids[:-1]) == it.target


def test_ao_sft_run_trains_writes_an_adapter_and_reports_real_and_both_controls(cfg, tmp_path):
    run_cfg = replace(cfg, ao_sft=replace(cfg.ao_sft, heldout_source="builtin_eval"),
                      logging=replace(cfg.logging, output_dir=str(tmp_path / "ao")))
    summary = ao_sft.run(run_cfg)
    assert summary["steps"] == 3 and summary["train_items"] == 24 and summary["heldout_items"] == 12
    for when in ("before", "after"):
        for kind in ("real", "shuffled", "counterfactual"):
            assert 0.0 <= summary[when][kind]["accuracy"] <= 1.0
    adapter = tmp_path / "ao" / "checkpoints" / "step-000003" / "adapter"
    assert summary["adapter"] == str(adapter) and (adapter / "adapter_config.json").exists()
    rows = [json.loads(line) for line in (tmp_path / "ao" / "heldout_answers.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    from grpo_ao.grading import grade

    recomputed = sum(grade(r["question"], r["reference"], r["answer"]).correct is True for r in rows) / len(rows)
    assert summary["after"]["real"]["accuracy"] == pytest.approx(recomputed)
    metrics = [json.loads(line) for line in (tmp_path / "ao" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "ao_sft/loss" in m] == [1, 2, 3]
    from grpo_ao import metrics as M

    logged = {k for m in metrics for k in m} - {"step", "time"}
    assert logged <= set(M.STAGE_METRICS["ao_sft"])
    curve = [json.loads(line) for line in (tmp_path / "ao" / "heldout_curve.jsonl").read_text().splitlines()]
    scored = {M.ao_curve_key(r["kind"], r["control"]) for r in curve} | {
        M.ao_curve_family_key(r["family"], r["control"]) for r in curve} | {
        M.ao_curve_key("yes_no_balanced", r["control"]) for r in curve if r["kind"] == "yes_no"}
    assert {"ao_sft/curve_yes_no_real", "ao_sft/curve_yes_no_counterfactual"} <= scored
    every_run = set(M.STAGE_METRICS["ao_sft"]) - {k for k in M.STAGE_METRICS["ao_sft"] if "curve" in k or "family" in k}
    assert logged == every_run | scored
    assert (tmp_path / "ao" / "ao_learning_curve.png").stat().st_size > 1000


def test_learning_curve_metrics_are_recomputed_from_the_written_heldout_scores(cfg, tmp_path):
    """Every curve metric at every logged step equals the share of that step's rows in heldout_curve.jsonl whose
    top-scored candidate is the reference (recomputed here from the raw scores, not from `correct`)."""
    from collections import defaultdict

    from grpo_ao import metrics as M

    run_cfg = replace(cfg, ao_sft=replace(cfg.ao_sft, eval_every=1, heldout_source="builtin_eval"),
                      logging=replace(cfg.logging, output_dir=str(tmp_path / "ao")))
    ao_sft.run(run_cfg)
    rows = [json.loads(line) for line in (tmp_path / "ao" / "heldout_curve.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 1, 2, 3]
    hits = defaultdict(list)
    by_ref = defaultdict(lambda: defaultdict(list))
    for r in rows:
        assert set(r["scores"]) == ({"Yes", "No"} if r["kind"] == "yes_no" else set(r["scores"])) and len(r["scores"]) >= 2
        ok = max(r["scores"], key=r["scores"].get).lower() == r["reference"].lower()
        hits[(r["step"], M.ao_curve_key(r["kind"], r["control"]))].append(ok)
        hits[(r["step"], M.ao_curve_family_key(r["family"], r["control"]))].append(ok)
        if r["kind"] == "yes_no":
            by_ref[(r["step"], M.ao_curve_key("yes_no_balanced", r["control"]))][r["reference"].lower()].append(ok)
    expected = {key: sum(h) / len(h) for key, h in hits.items()}
    # balanced: the mean over the references (Yes, No) of each reference's accuracy
    expected |= {key: sum(sum(h) / len(h) for h in refs.values()) / len(refs) for key, refs in by_ref.items()}
    metrics = [json.loads(line) for line in (tmp_path / "ao" / "metrics.jsonl").read_text().splitlines()]
    logged = {(m["step"], k): v for m in metrics for k, v in m.items() if k.startswith(("ao_sft/curve", "ao_sft_family"))}
    assert logged.keys() == expected.keys() and by_ref
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-12), key


def test_ao_sft_resume_continues_from_the_checkpoint_to_the_same_adapter(cfg, tmp_path):
    import torch
    from safetensors.torch import load_file

    full = replace(cfg, logging=replace(cfg.logging, output_dir=str(tmp_path / "full")))
    ao_sft.run(full)
    part = replace(cfg, logging=replace(cfg.logging, output_dir=str(tmp_path / "part")))
    ao_sft.run(part)
    import shutil

    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step-000003")  # as if killed after step 2
    ao_sft.run(part, resume=True)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step-000003" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "step-000003" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_with_activations_reads_each_window_as_the_subject_reads_that_prefix(cfg, tiny, tokenizer, tmp_path):
    """One read per (text, layer), sliced per item: the k vectors ending `offset` tokens before the end equal the
    last k vectors of the text cut `offset` tokens short (causal attention), for every item."""
    import torch

    from grpo_ao.steering import extract_activations

    model, _ = tiny
    jit = replace(cfg, ao_sft=replace(cfg.ao_sft, position_jitter=3, context_prediction_frac=0.0))
    items = ao_sft.draw_items(jit, load_examples(cfg.data)[:6], tokenizer, 24, seed=0, context_prediction=False)
    assert any(it.offset for it in items) and len({it.text for it in items}) < len(items)
    vectors = ao_sft.with_activations(jit, model, tokenizer, items, tmp_path / "cache")
    layers = ao_sft.subject_layers(model, items)
    for it, layer, v in zip(items, layers, vectors, strict=True):
        ids = tokenizer(it.text, add_special_tokens=False)["input_ids"]
        prefix = tokenizer.decode(ids[:len(ids) - it.offset])
        assert tokenizer(prefix, add_special_tokens=False)["input_ids"] == ids[:len(ids) - it.offset]
        (alone,) = extract_activations(model, tokenizer, [prefix], [layer], [it.k], cfg.data.context_format)
        assert v.shape == (it.k, model.config.hidden_size)
        torch.testing.assert_close(v, alone.float(), atol=1e-5, rtol=0)
    cached = ao_sft.with_activations(jit, model, tokenizer, items, tmp_path / "cache")
    assert all(torch.equal(a, b) for a, b in zip(vectors, cached, strict=True)), "read back from the cache"
