"""The `grpo-ao` command line (grpo, sft and config commands): user mistakes exit 2 with one short
paragraph and no traceback, `--help` lists the commands, `config show` round-trips through
`config validate`. Training runs themselves are tested in test_grpo_recipe.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_ao.cli import main
from grpo_ao.config import load_config, shipped_configs

GRPO_AO = Path(sys.executable).with_name("grpo-ao")
COMMANDS = ("run", "grpo", "ao-sft", "sft", "observe", "eval", "bench", "push", "doctor", "config")


def _cli(*args, cwd=None):
    env = {**os.environ, "GRPO_AO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(GRPO_AO), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _assert_user_error(code, err, *fragments):
    """Exit 2; stderr is one paragraph (no blank line) starting `grpo-ao: error:`, naming `fragments`."""
    assert code == 2, err
    text = err.strip()
    assert text.startswith("grpo-ao: error: "), text
    assert "Traceback" not in text and "\n\n" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_help_lists_every_command():
    proc = _cli("--help")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ") and line[4] != " "]
    assert tuple(listed) == COMMANDS, proc.stdout
    for command in ("grpo", "ao-sft", "sft"):
        sub = _cli(command, "--help")
        assert sub.returncode == 0
        for option in ("--config", "--output-dir", "--resume", "overrides"):
            assert option in sub.stdout, (command, option)
        assert ("--max-steps" in sub.stdout) == (command != "ao-sft"), command  # GRPO steps; ao-sft has epochs


def test_no_gpu_for_a_cuda_config_is_a_user_error_without_traceback(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    proc = _cli("grpo", "--config", "tiny", "model.device=cuda", "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    _assert_user_error(proc.returncode, proc.stderr, "device='cuda'", "model.device=cpu")
    assert "GRPO done" not in proc.stdout and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["grpo", "--config", "tiny", "grpo.lr=-1"], ["grpo.lr=-1", "> 0"]),
        (["grpo", "--config", "tiny", "sampling.temperature=abc"], ["sampling.temperature", "number", "'abc'"]),
        (["grpo", "--config", "tiny", "grpo.lrr=1e-4"], ["'grpo.lrr'", "Did you mean 'lr'?"]),
        (["grpo", "--config", "tiny", "optimiser.lr=1e-4"], ["'optimiser'", "Known fields:"]),
        (["grpo", "--config", "tiny", "grpo.lr"], ["'grpo.lr'", "key=value"]),
        (["grpo", "--config", "tiny", "--max-steps", "0"], ["grpo.max_steps=0", ">= 1"]),
        (["grpo", "--config", "no/such/config.yaml"], ["'no/such/config.yaml'", "config show tiny > mine.yaml"]),
        (["sft", "--config", "tiny", "sft.epochs=0"], ["sft.epochs=0", ">= 1"]),
        (["sft", "--config", "tiny", "lora.dropout=1.5"], ["lora.dropout=1.5", "[0, 1)"]),
        (["config", "show", "nope"], ["'nope'", "tiny"]),
        (["config", "validate", "tiny", "reward.lam=-1"], ["reward.lam", ">= 0"]),
        # validated once at load (issue 9.2): each of these used to pass and fail (or do nothing) mid-run
        (["grpo", "--config", "tiny", "sampling.num_generations=1"], ["sampling.num_generations=1", ">= 2"]),
        (["grpo", "--config", "tiny", "sampling.top_k=-1"], ["sampling.top_k=-1", ">= 0"]),
        (["grpo", "--config", "tiny", "data.layer_percents=[25,100]"], ["data.layer_percents", "0..99", "(25, 100)"]),
        (["grpo", "--config", "tiny", "data.layer_percents=[]"], ["data.layer_percents", "non-empty"]),
        (["eval", "--config", "tiny", "eval.data.layer_percents=[100]"], ["eval.data.layer_percents", "0..99"]),
        (["grpo", "--config", "tiny", "data.min_positions=0"], ["data.min_positions", ">= 1", "0"]),
        (["grpo", "--config", "tiny", "data.min_positions=4", "data.max_positions=3"],
         ["data.max_positions", ">= data.min_positions", "3"]),
        (["grpo", "--config", "tiny", "logging.checkpoint_every=0"], ["logging.checkpoint_every=0", "grpo.max_steps"]),
        (["grpo", "--config", "tiny", "logging.samples_every=-1"], ["logging.samples_every=-1", ">= 0"]),
        (["grpo", "--config", "tiny", "logging.keep_last=0"], ["logging.keep_last=0", ">= 1"]),
        (["eval", "--config", "tiny", "eval.num_examples=0"], ["eval.num_examples=0", ">= 1"]),
        (["eval", "--config", "tiny", "eval.batch_size=0"], ["eval.batch_size=0", ">= 1"]),
        (["eval", "--config", "tiny", "eval.max_new_tokens=0"], ["eval.max_new_tokens=0", ">= 1"]),
        (["sft", "--config", "tiny", "sft.heldout_examples=0"], ["sft.heldout_examples=0", ">= 1"]),
        (["sft", "--config", "tiny", "data.max_examples=100"],
         ["sft.num_examples + sft.heldout_examples", "128 + 32", "the 100 contexts"]),
        (["config", "validate", "tiny", "data.max_examples=60", "sft.num_examples=40", "sft.heldout_examples=10",
          "ao_sft.heldout_contexts=60"], ["ao_sft.heldout_contexts=60", "at most 59"]),
        (["sft", "--config", "tiny", "sft.expand_open_answers=true"], ["sft.expand_open_answers", "judge.kind=openai"]),
        (["sft", "--config", "tiny", "sft.lr=0"], ["sft.lr=0", "> 0"]),
        (["sft", "--config", "tiny", "sft.warmup_steps=-1"], ["sft.warmup_steps=-1", ">= 0"]),
        (["sft", "--config", "tiny", "sft.max_grad_norm=0"], ["sft.max_grad_norm=0", "> 0"]),
        (["grpo", "--config", "tiny", "grpo.max_grad_norm=.inf"], ["grpo.max_grad_norm=inf", "finite"]),
        (["grpo", "--config", "tiny", "grpo.warmup_steps=-2"], ["grpo.warmup_steps=-2", ">= 0"]),
        (["grpo", "--config", "tiny", "grpo.weight_decay=-0.1"], ["grpo.weight_decay=-0.1", ">= 0"]),
        (["grpo", "--config", "tiny", "grpo.epsilon=0"], ["grpo.epsilon=0", "(0, 1)"]),
        (["grpo", "--config", "tiny", "grpo.epsilon_high=-0.2"], ["grpo.epsilon_high=-0.2", "> 0"]),
        (["grpo", "--config", "tiny", "grpo.max_judge_outage_steps=-1"], ["grpo.max_judge_outage_steps=-1", ">= 0"]),
        (["grpo", "--config", "tiny", "grpo.advantage_routing=tokens"], ["grpo.advantage_routing='tokens'", "split"]),
        (["grpo", "--config", "tiny", "oracle.steering_coef=.nan"], ["oracle.steering_coef=nan", "finite"]),
        (["run", "--config", "tiny", "stages=[grpo,sft]"], ["stages=['grpo', 'sft']", "use ['sft', 'grpo']"]),
        (["run", "--config", "tiny", "stages=[]"], ["stages is empty"]),
        (["config", "validate", "tiny", "ao_sft.context_prediction_frac=1"], ["ao_sft.context_prediction_frac=1.0",
                                                                             "[0, 1)"]),
    ],
    ids=["bad-value", "not-a-number", "unknown-key", "unknown-section", "no-equals", "max-steps-0", "missing-file",
         "sft-bad-value", "sft-bad-lora", "show-unknown", "validate-bad-override",
         "one-generation", "top-k-negative", "layer-percent-100", "layer-percents-empty", "eval-layer-percent-100",
         "min-positions-0", "min-above-max-positions", "checkpoint-every-0", "samples-every-negative", "keep-last-0",
         "eval-num-examples-0", "eval-batch-size-0", "eval-max-new-tokens-0", "sft-heldout-0", "sft-heldout-overlap",
         "ao-sft-heldout-all-contexts", "expand-needs-openai-judge", "sft-lr-0", "sft-warmup-negative",
         "sft-grad-norm-0", "grpo-grad-norm-inf", "grpo-warmup-negative", "weight-decay-negative", "epsilon-0",
         "epsilon-high-negative", "outage-steps-negative", "advantage-routing", "steering-coef-nan",
         "stages-out-of-order", "stages-empty", "ao-sft-frac-1"],
)
def test_config_mistakes_exit_2_with_one_paragraph(args, fragments, capsys):
    code = main(args)
    _assert_user_error(code, capsys.readouterr().err, *fragments)


def test_bad_yaml_files_exit_2(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("grpo: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- grpo\n- sft\n")
    _assert_user_error(main(["config", "validate", str(tmp_path / "broken.yaml")]), capsys.readouterr().err,
                       "not valid YAML")
    _assert_user_error(main(["grpo", "--config", str(tmp_path / "list.yaml")]), capsys.readouterr().err,
                       "must be a YAML mapping")


def test_missing_adapter_and_resume_without_checkpoint_exit_2(tmp_path, capsys):
    code = main(["grpo", "--config", "tiny", "model.adapter=/no/such/adapter", "--output-dir", str(tmp_path / "a")])
    _assert_user_error(code, capsys.readouterr().err, "'/no/such/adapter'")
    code = main(["grpo", "--config", "tiny", "--resume", "--output-dir", str(tmp_path / "b")])
    _assert_user_error(code, capsys.readouterr().err, "--resume", "no complete checkpoint")
    code = main(["sft", "--config", "tiny", "data.source=/no/such/data.jsonl", "--output-dir", str(tmp_path / "c")])
    _assert_user_error(code, capsys.readouterr().err, "/no/such/data.jsonl")


def test_config_show_output_round_trips_through_validate(tmp_path, capsys):
    names = shipped_configs()
    assert names == ["qwen3-8b", "smollm2", "tiny"]
    for name in names:
        assert main(["config", "show", name]) == 0
        path = tmp_path / f"{name}.yaml"
        path.write_text(capsys.readouterr().out)
        assert main(["config", "validate", str(path)]) == 0
        assert "valid" in capsys.readouterr().out
        assert load_config(str(path)) == load_config(name)
    # overrides shown are overrides kept
    assert main(["config", "show", "tiny", "grpo.lr=2e-4", "sampling.num_generations=3"]) == 0
    path = tmp_path / "mine.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_config(str(path))
    assert (cfg.grpo.lr, cfg.sampling.num_generations) == (2e-4, 3)
    assert cfg == load_config("tiny", ["grpo.lr=2e-4", "sampling.num_generations=3"])


def test_config_list_names_the_shipped_configs(capsys):
    assert main(["config", "list"]) == 0
    assert capsys.readouterr().out.split() == ["qwen3-8b", "smollm2", "tiny"]


def test_correctness_target_with_api_judge_needs_correctness_verdicts():
    from grpo_ao.config import load_config
    from grpo_ao.errors import GrpoAoError

    with pytest.raises(GrpoAoError, match="judge.with_correctness=true"):
        load_config("qwen3-8b", ["reward.target=correctness"])
    cfg = load_config("qwen3-8b", ["reward.target=correctness", "judge.with_correctness=true"])
    assert cfg.reward.target == "correctness"


def test_config_reference_doc_is_current_and_documents_every_field():
    import dataclasses
    import typing
    from pathlib import Path

    from grpo_ao.config import RunConfig, config_reference

    text = config_reference()
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == text, "regenerate with: grpo-ao config docs > docs/config.md"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    hints = typing.get_type_hints(RunConfig)
    expected = sum(len(dataclasses.fields(hints[f.name])) if dataclasses.is_dataclass(hints[f.name]) else 1
                   for f in dataclasses.fields(RunConfig))
    assert len(rows) == expected == 145
    assert all(not row.rstrip().endswith("|  |") for row in rows), "every field needs a docstring"


# --- grpo-ao observe: every mix of parse failure and judge failure is reported, never a crash --------------

OBSERVE_TEXTS = (
    "[epistemic status: 7] Yes, it is about cooking.",  # parsed, judged 0.7: r = 0.7 − (0.7 − 0.7)² = 0.7
    "[epistemic status: 3] No. judgefail",  # parsed, the judge fails: masked, no reward
    "no tag at all judgefail",  # parse failure and a failing judge: the fixed penalty −0.5 (tiny.yaml)
    "no tag at all",  # parse failure, judged (or not asked): the fixed penalty −0.5
)


class ScriptedJudge:
    """Scores 0.7, except answers containing "judgefail", which fail as after all retries."""

    def __init__(self):
        from grpo_ao.judge import JudgeStats

        self.stats = JudgeStats()

    async def score(self, items):
        from grpo_ao.judge import JudgeResult

        return [JudgeResult(error="scripted outage") if "judgefail" in item.answer else
                JudgeResult(informativeness=0.7) for item in items]


@pytest.mark.parametrize("score_parse_failures", [True, False])
def test_observe_reports_every_mix_of_parse_and_judge_failure(score_parse_failures, tmp_path, monkeypatch, capsys):
    import dataclasses

    from grpo_ao.recipes import observe

    real_generate = observe.generate_rollouts

    def scripted_rollouts(*args, **kwargs):
        rollouts = real_generate(*args, **kwargs)
        texts = [OBSERVE_TEXTS[i % len(OBSERVE_TEXTS)] for i in range(len(rollouts.texts))]
        return dataclasses.replace(rollouts, texts=texts)

    monkeypatch.setattr(observe, "generate_rollouts", scripted_rollouts)
    monkeypatch.setattr(observe, "build_judge", lambda cfg, cache_path: ScriptedJudge())
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", "logging.progress=false", "sampling.max_new_tokens=4",
                               f"judge.score_parse_failures={str(score_parse_failures).lower()}"])
    out = observe.run(cfg, num_examples=2, num_generations=4)
    text = capsys.readouterr().out
    assert sorted(out["rewards"]) == pytest.approx([-0.5] * 4 + [0.7] * 2, abs=1e-12)
    # failures: per group the parsed one, and the unparsed one only when it was sent to the judge
    assert out["judge_failures"] == (4 if score_parse_failures else 2)
    assert text.count("judge=0.70 reward=+0.700") == 2
    assert text.count("judge=0.70 reward=-0.500") == 2 * score_parse_failures
    assert text.count("judge=FAILED (scripted outage) reward=masked") == 2
    assert text.count("judge=FAILED (scripted outage) reward=-0.500") == 2 * score_parse_failures
    assert text.count("judge=not asked reward=-0.500") == 4 * (not score_parse_failures)
    assert f"judge      : failed for {out['judge_failures']} of 8 answers" in text
