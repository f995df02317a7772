"""scripts/ao_design.py on the tiny model: a variant trains on cached windows, prints its curve table, and an
extra `--set` override reaches the items it draws (the read window of the design rows in docs/RESULTS.md)."""

import pytest

from script_module import load_script


def test_a_variant_with_an_extra_override_draws_its_windows_and_prints_each_check(tmp_path, capsys, monkeypatch):
    module = load_script("ao_design")
    drawn = []
    real_draw = module.ao_sft.draw_items

    def draw(cfg, *args, **kwargs):
        items = real_draw(cfg, *args, **kwargs)
        drawn.append((cfg.data.min_positions, cfg.data.max_positions, [it.k for it in items]))
        return items

    monkeypatch.setattr(module.ao_sft, "draw_items", draw)
    code = module.main(["--config", "tiny", "--variants", "k5", "--set", "data.max_positions=9", "--steps", "2",
                        "--eval-every", "1", "--heldout", "builtin_eval", "--cache", str(tmp_path / "c.safetensors"),
                        "--english-only", "--families", "sentiment"])
    assert code == 0
    (low, high, ks), = drawn
    assert (low, high) == (5, 9), "k5 sets the smallest K, --set the largest"
    assert all(5 <= k <= 9 for k in ks) and max(ks) > 5
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| k5 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]


def test_open_first_trains_open_questions_only_then_the_variants_mix(tmp_path, capsys, monkeypatch):
    module = load_script("ao_design")
    drawn, trained = [], []
    real_draw, real_train = module.ao_sft.draw_items, module.ao_sft.train_steps

    def draw(cfg, examples, tokenizer, n, *args, **kwargs):
        items = real_draw(cfg, examples, tokenizer, n, *args, **kwargs)
        drawn.append((cfg.ao_sft.open_frac, n, sorted({it.kind for it in items})))
        return items

    def train(cfg, model, tokenizer, items, *args, start, total, **kwargs):
        trained.append((start, total, len(items)))
        return real_train(cfg, model, tokenizer, items, *args, start=start, total=total, **kwargs)

    monkeypatch.setattr(module.ao_sft, "draw_items", draw)
    monkeypatch.setattr(module.ao_sft, "train_steps", train)
    code = module.main(["--config", "tiny", "--variants", "k5", "--steps", "3", "--open-first", "1",
                        "--eval-every", "1", "--heldout", "builtin_eval", "--cache", str(tmp_path / "c.safetensors"),
                        "--english-only", "--families", "sentiment"])
    assert code == 0
    assert drawn == [(1.0, 16, ["open"]), (0.5, 32, ["open", "yes_no"])]
    assert trained == [(0, 1, 16), (1, 3, 32)], "one optimizer and schedule over both phases"
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| k5 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2", "3"], "a check at the switch too"
    with pytest.raises(SystemExit):
        module.main(["--config", "tiny", "--steps", "3", "--open-first", "3"])


def test_yes_no_first_draws_only_the_matching_yes_no_questions_then_all(tmp_path, monkeypatch):
    module = load_script("ao_design")
    drawn = []
    real_draw = module.ao_sft.draw_items

    def draw(cfg, examples, tokenizer, n, *args, **kwargs):
        items = real_draw(cfg, examples, tokenizer, n, *args, **kwargs)
        drawn.append((n, {it.question for it in items if it.kind == "yes_no"}, {it.kind for it in items}))
        return items

    monkeypatch.setattr(module.ao_sft, "draw_items", draw)
    code = module.main(["--config", "tiny", "--variants", "k5", "--steps", "3", "--yes-no-first", r"positive\?$:2",
                        "--eval-every", "0", "--heldout", "builtin_eval", "--cache", str(tmp_path / "c.safetensors"),
                        "--english-only", "--families", "sentiment"])
    assert code == 0
    (n1, first, kinds1), (n2, rest, _) = drawn
    assert (n1, n2) == (32, 16)
    assert first and all(q.endswith("positive?") for q in first), first
    assert kinds1 == {"open", "yes_no"}, "open questions are kept in the narrow phase"
    assert any(not q.endswith("positive?") for q in rest), "the second phase draws every yes/no question"
    for bad in (["--yes-no-first", "positive:9"], ["--yes-no-first", "positive"], ["--yes-no-first", "x:1",
                                                                                  "--open-first", "1"]):
        with pytest.raises(SystemExit):
            module.main(["--config", "tiny", "--steps", "3", *bad])
    with pytest.raises(SystemExit, match="no yes/no question matches"):
        module.main(["--config", "tiny", "--steps", "3", "--yes-no-first", "zzz-nothing:1", "--cache",
                     str(tmp_path / "c.safetensors"), "--heldout", "builtin_eval"])


def test_separation_is_the_auroc_of_the_yes_minus_no_logprob_on_the_real_items_only():
    module = load_script("ao_design")

    def row(fam, ref, yes, no, control="real"):
        return {"kind": "yes_no", "family": fam, "control": control, "reference": ref,
                "scores": {"Yes": yes, "No": no}}

    # every item answered "No" by the argmax (accuracy 0.5), but the margin orders them perfectly for topic
    rows = [row("topic", "Yes", -1.0, -0.2), row("topic", "No", -2.0, -0.1), row("topic", "Yes", -0.9, -0.5),
            row("sentiment", "Yes", -2.0, -0.1), row("sentiment", "No", -1.0, -0.2),
            row("sentiment", "Yes", -9.0, 0.0, control="counterfactual"),
            {"kind": "open", "family": "topic", "control": "real", "reference": "sports", "scores": {}}]
    assert module.fmt_separation(rows) == "sentiment 0.00 topic 1.00"
