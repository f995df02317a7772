"""scripts/bf16_check.py on the tiny model: it runs, scores the same tokens in both dtypes and prints a gap that
is a real bf16 gap (non-zero, small) and the per-dtype table."""

import re

from script_module import load_script


def test_bf16_check_prints_the_gap_and_both_dtypes(capsys):
    module = load_script("bf16_check")
    assert module.main(["--config", "tiny", "--repeats", "1", "grpo.prompts_per_step=2",
                        "sampling.num_generations=2", "sampling.max_new_tokens=4"]) == 0
    out = capsys.readouterr().out
    assert "B=2 G=2 T=4 (forced), 16 completion tokens" in out
    mean, worst = (float(x) for x in re.search(r"mean ([\d.]+) median [\d.]+ p99 [\d.]+ max ([\d.]+)", out).groups())
    assert 0 < mean <= worst < 1.0, "bf16 rounds, so the gap is not 0; it is far below a wrong-token gap"
    rows = [line for line in out.splitlines() if line.startswith(("| float32", "| bfloat16"))]
    assert len(rows) == 2
