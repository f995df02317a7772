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
COMMANDS = ("run", "grpo", "sft", "observe", "eval", "bench", "config")


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
    for command in ("grpo", "sft"):
        sub = _cli(command, "--help")
        assert sub.returncode == 0
        for option in ("--config", "--output-dir", "--max-steps", "--resume", "overrides"):
            assert option in sub.stdout, (command, option)


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
    ],
    ids=["bad-value", "not-a-number", "unknown-key", "unknown-section", "no-equals", "max-steps-0", "missing-file",
         "sft-bad-value", "sft-bad-lora", "show-unknown", "validate-bad-override"],
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
    assert len(rows) == expected == 96
    assert all(not row.rstrip().endswith("|  |") for row in rows), "every field needs a docstring"
