from grpo_ao.recipes.setup import archive_previous_run, window_mean


def test_a_fresh_run_moves_an_earlier_runs_outputs_aside_and_keeps_caches(tmp_path, capsys):
    (tmp_path / "checkpoints" / "step-000030").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 30}\n')
    (tmp_path / "sft_cache").mkdir()
    target = archive_previous_run(tmp_path)
    assert target is not None and target.parent == tmp_path and target.name.startswith("replaced-")
    assert (target / "checkpoints" / "step-000030").is_dir() and (target / "metrics.jsonl").exists()
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "sft_cache").is_dir()  # caches stay where the next run looks for them
    assert "--resume" in capsys.readouterr().out
    assert archive_previous_run(tmp_path) is None  # nothing left to move


def test_window_mean_takes_the_first_and_last_fifth_and_skips_missing_values():
    values = [1.0, 2.0, None, 4.0, 5.0, 6.0, 7.0, 8.0, float("nan"), 10.0]
    assert window_mean(values, 0.0, 0.2) == 1.5  # (1 + 2) / 2
    assert window_mean(values, 0.8, 1.0) == 10.0  # NaN skipped
    assert window_mean([], 0.0, 0.2) is None
