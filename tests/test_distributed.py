"""Data parallelism (grpo_ao.distributed) with 2 CPU processes (gloo), launched like a user would:
`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml ...`.

The recipes' claim: N processes with the same seed give the update of one process on the same global
batch, every rank ends with the same adapter, and rank 0 alone writes. Run as a script, this file is the
worker of `test_collectives_sum_gather_and_detect_diverged_replicas`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo_ao
from grpo_ao.distributed import shard, unshard

ACCELERATE_CONFIG = Path(grpo_ao.__file__).parent / "configs" / "accelerate" / "cpu_2proc.yaml"
# AdamW moves every element by ~lr whatever its gradient's size, so float32 summation-order noise in a
# near-zero gradient element can move it by up to ~lr; a small lr keeps atol=1e-5 meaningful.
SFT_ARGS = ["sft.num_examples=8", "sft.heldout_examples=4", "sft.epochs=2", "sft.batch_size=4", "sft.lr=1e-3",
            "sft.answer_max_new_tokens=6", "logging.progress=false"]
AO_ARGS = ["ao_sft.num_examples=24", "ao_sft.heldout_examples=12", "ao_sft.heldout_contexts=20", "ao_sft.epochs=1",
           "ao_sft.batch_size=8", "logging.checkpoint_every=2", "eval.batch_size=12", "logging.progress=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """One thread per process (2 shared cores), also for the one-process baseline: the same kernels then
    sum in the same order, and greedy answers of the random tiny model do not flip on near-ties."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "GRPO_AO_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def launch_two_processes(*args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` with the shipped 2-process CPU config."""
    return _run([str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG),
                 "--main_process_port", str(_free_port()), *args])


def run_one_process(*args: str) -> None:
    r = _run([sys.executable, "-m", "grpo_ao.cli", *args])
    assert r.returncode == 0, r.stderr[-3000:]


def _adapter(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "adapter" / "adapter_model.safetensors"))


def _assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k), "training moved the LoRA weights"
    for k in a:
        # the all-reduce sums in another order than one process: ~1e-7 gradient differences that Adam's
        # normalisation can grow to ~1e-4 relative after a few steps (a data or normaliser bug is O(1))
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-3)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_shard_then_unshard_restores_the_order_for_any_world_size():
    items = list(range(7))
    for world in (1, 2, 3, 8):
        parts = [shard(items, r, world) for r in range(world)]
        assert sorted(x for p in parts for x in p) == items  # each item on exactly one rank
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert unshard(parts) == items


def _collectives_worker(out: Path) -> None:
    """Each rank records what the collectives returned; the test checks the values."""
    from grpo_ao.distributed import (
        all_reduce_gradients,
        check_replicas_agree,
        gather_objects,
        global_sum,
        main_first,
        place,
        require_divisible,
    )
    from grpo_ao.errors import GrpoAoError

    p = place()
    r = p.rank
    a, b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.full((2, 3), float(r + 1))
    b.grad = torch.ones(4) * 5 if r == 0 else None  # rank 1 has no gradient for b: counts as zeros
    all_reduce_gradients([a, b])
    record = {"rank": r, "world": p.world_size, "int_sum": global_sum(r + 1), "float_sum": global_sum(0.25 * (r + 1)),
              "tensor_sum": global_sum(torch.tensor([1.0, r])).tolist(), "grad_a": a.grad.tolist(),
              "grad_b": b.grad.tolist(), "gathered": gather_objects({"rank": r}),
              "unsharded": unshard(gather_objects(shard(list(range(5)), r, p.world_size)))}
    check_replicas_agree([a, b])  # equal weights: no error
    with torch.no_grad():
        a.add_(1e-3 * r)  # rank 1 drifts
    try:
        check_replicas_agree([a, b])
        record["divergence"] = None
    except GrpoAoError as e:
        record["divergence"] = str(e)
    try:
        require_divisible(3, "sft.batch_size", "use a multiple of the number of processes.")
    except GrpoAoError as e:
        record["divisible"] = str(e)
    with main_first():
        record["saw_main_file"] = (out / "main.txt").exists()
        if p.is_main:
            (out / "main.txt").write_text("rank 0 was first")
    (out / f"rank{r}.json").write_text(json.dumps(record))
    torch.distributed.barrier()  # both ranks done before either tears down its gloo threads (CI stop 20)


def test_collectives_sum_gather_and_detect_diverged_replicas(tmp_path):
    r = launch_two_processes(__file__, "collectives", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for rec in records:
        assert rec["world"] == 2
        assert rec["int_sum"] == 3 and isinstance(rec["int_sum"], int)  # 1 + 2
        assert rec["float_sum"] == pytest.approx(0.75, abs=1e-12)  # 0.25 + 0.5
        assert rec["tensor_sum"] == [2.0, 1.0]  # [1, 0] + [1, 1]
        assert rec["grad_a"] == [[3.0] * 3] * 2  # 1 + 2 everywhere
        assert rec["grad_b"] == [5.0] * 4  # 5 + (missing = 0)
        assert rec["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert rec["unsharded"] == [0, 1, 2, 3, 4]
        assert "rank 1's adapter weights differ from rank 0's" in rec["divergence"]
        assert "sft.batch_size=3" in rec["divisible"] and "(2)" in rec["divisible"]
    assert [rec["saw_main_file"] for rec in records] == [False, True], "rank 0 runs a main_first block first"


def test_sft_with_two_processes_equals_one_process_writes_once_and_resumes(tmp_path):
    run_one_process("sft", "--config", "tiny", *SFT_ARGS, f"logging.output_dir={tmp_path / 'one'}")
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two_dir = tmp_path / "two"
    r = launch_two_processes("-m", "grpo_ao.cli", "sft", "--config", "tiny", *SFT_ARGS, f"logging.output_dir={two_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    for step in (2, 4):  # 8 rows / batch 4 = 2 steps per epoch, a checkpoint per epoch
        _assert_same_adapter(_adapter(tmp_path / "one", step), _adapter(two_dir, step))
    two = json.loads((two_dir / "summary.json").read_text())
    assert [two[k] for k in ("parse_rate_before", "parse_rate_after", "heldout", "targets")] == \
           [one[k] for k in ("parse_rate_before", "parse_rate_after", "heldout", "targets")]
    losses = {m["step"]: m["sft/loss"] for m in _metrics(tmp_path / "one") if "sft/loss" in m}
    records = [m for m in _metrics(two_dir) if "sft/loss" in m]
    assert [m["step"] for m in records] == [1, 2, 3, 4], "each step written once, by rank 0"
    for m in records:  # the loss of the whole batch, summed from both ranks' shares
        assert m["sft/loss"] == pytest.approx(losses[m["step"]], abs=1e-5)
    assert r.stdout.count("held-out parse rate before training") == 1, "only rank 0 prints"
    # killed after the epoch-1 checkpoint: both ranks resume from it and reach the same adapter
    shutil.rmtree(two_dir / "checkpoints" / "step-000004")
    r = launch_two_processes("-m", "grpo_ao.cli", "sft", "--config", "tiny", *SFT_ARGS, f"logging.output_dir={two_dir}", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resuming SFT from" in r.stdout
    _assert_same_adapter(_adapter(tmp_path / "one", 4), _adapter(two_dir, 4))


def test_ao_sft_with_two_processes_equals_one_process_and_writes_once(tmp_path):
    run_one_process("ao-sft", "--config", "tiny", *AO_ARGS, f"logging.output_dir={tmp_path / 'one'}")
    r = launch_two_processes("-m", "grpo_ao.cli", "ao-sft", "--config", "tiny", *AO_ARGS, f"logging.output_dir={tmp_path / 'two'}")
    assert r.returncode == 0, r.stderr[-3000:]
    for step in (2, 3):  # 24 items / batch 8 = 3 steps, checkpoints at 2 and at the end
        _assert_same_adapter(_adapter(tmp_path / "one", step), _adapter(tmp_path / "two", step))
    # the held-out answers were split across the ranks and gathered back in item order
    answers = [(tmp_path / d / "heldout_answers.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(answers[0]) == 12 and answers[0] == answers[1]
    assert [m["step"] for m in _metrics(tmp_path / "two") if "ao_sft/loss" in m] == [1, 2, 3]
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert (one["before"], one["after"]) == (two["before"], two["after"])


def test_sft_rejects_a_batch_the_processes_cannot_share(tmp_path):
    r = launch_two_processes("-m", "grpo_ao.cli", "sft", "--config", "tiny", "sft.batch_size=3", f"logging.output_dir={tmp_path}")
    assert r.returncode != 0  # each rank exits 2 with the message; the launcher reports the failure
    assert r.stderr.count("grpo-ao: error: sft.batch_size=3 is not divisible by the number of processes (2)") == 2
    assert not (tmp_path / "config.yaml").exists(), "checked before anything is written"


if __name__ == "__main__":
    from grpo_ao.distributed import shutdown

    if sys.argv[1] == "collectives":
        try:
            _collectives_worker(Path(sys.argv[2]))
        finally:
            shutdown()  # as the CLI does: gloo threads left to interpreter exit can abort a rank (CI stop 20)
