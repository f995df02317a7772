"""scripts/grpo_sweep.py parses its variants, and a malformed one is a usage error (exit 2), not a stack trace."""

import pytest

from script_module import load_script

sw = load_script("grpo_sweep")


def test_a_variant_splits_into_its_name_and_overrides():
    assert sw.parse_variant("s60c=grpo.max_steps=60,reward.target=correctness") == (
        "s60c", ["grpo.max_steps=60", "reward.target=correctness"])
    assert sw.parse_variant("base=") == ("base", [])


@pytest.mark.parametrize("argv", [["--variant", "no_overrides"], ["--variant", "two words=a=1"],
                                  ["--variant", "sft=grpo.lr=1e-3"], []])
def test_a_malformed_or_missing_variant_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        sw.main(argv)
    assert exc.value.code == 2
    assert "--variant" in capsys.readouterr().err


def test_the_margin_probes_family_confidence_is_each_familys_accuracy():
    probe = load_script("answer_margin_probe")
    assert probe.family_accuracy_confidence(["a", "b", "a", "a", "b"], [True, False, False, True, False]) == [
        0.7, 0.0, 0.7, 0.7, 0.0]


def test_the_forced_tag_probe_draws_grpos_tasks_and_scores_every_forced_tag(sft_adapter, tmp_path):
    import json

    from grpo_ao.data import load_examples
    from grpo_ao.data.config import DataConfig

    probe = load_script("forced_tag_probe")
    out = tmp_path / "draws.jsonl"
    assert probe.draw_tasks("tiny", "builtin", 12, str(out)) == 12
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["questions"]) == 1 and r["questions"][0]["family"] for r in rows)
    assert all(r["questions"][0]["family"] in r["labels"] for r in rows), "the drawn context keeps its labels"
    assert len(load_examples(DataConfig(source=str(out)))) == 12  # a valid data source
    scores = probe.forced_tag_answers("tiny", str(sft_adapter), [1, 9])
    assert sorted(scores) == [1, 9]
    for acc, yes, n in scores.values():
        assert n > 0 and 0 <= acc <= 1 and 0 <= yes <= 1


def test_the_tag_distribution_probe_gives_one_normalised_distribution_per_eval_item(sft_adapter, tmp_path, capsys):
    import json

    import torch

    probe = load_script("forced_tag_probe")
    dist = probe.tag_distribution("tiny", str(sft_adapter))
    pi = torch.tensor(dist)  # [n, 11]
    assert pi.shape[1] == 11 and pi.shape[0] > 1
    torch.testing.assert_close(pi.sum(dim=1), torch.ones(len(dist)), rtol=0, atol=1e-5)
    assert float(pi.std(dim=0).max()) > 0, "the items' prompts (and activations) differ, so must their distributions"
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"family": "f" if i % 2 else "g", "correct": i % 3 == 0}) + "\n"
                               for i in range(len(dist))))
    probe.report_tag_distribution("tiny", str(sft_adapter), str(records))
    assert "AUROC(E[X], correct)" in capsys.readouterr().out
    records.write_text("")
    with pytest.raises(SystemExit, match="items"):
        probe.report_tag_distribution("tiny", str(sft_adapter), str(records))


def test_the_tag_gradient_probe_measures_each_term_at_weight_one(sft_adapter):
    import math

    probe = load_script("tag_gradient_probe")
    common = ["grpo.answer_anchor_source=builtin_heldout", "grpo.prompts_per_step=2", "reward.target=correctness"]
    one = probe.term_gradients("tiny", str(sft_adapter), common, chunks=1)[0]
    two = probe.term_gradients("tiny", str(sft_adapter), [*common, "grpo.answer_anchor=2.0"], chunks=1)[0]
    assert all(math.isfinite(v) and v >= 0 for v in one.values()) and 0 <= one["answer_wins"] <= 1
    assert one["tag"] > 0 and one["answer"] > 0 and one["format"] > 0
    # the same seeded rollouts and anchor prompts: the anchor's weight is divided out, the other terms do not use it
    assert math.isclose(one["answer"], two["answer"], rel_tol=1e-4) and math.isclose(one["tag"], two["tag"], rel_tol=1e-6)
