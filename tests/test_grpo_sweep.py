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
