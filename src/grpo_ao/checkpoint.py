"""Atomic training checkpoints: LoRA adapter, optimizer, scheduler, RNG states and trainer state.

Layout of one checkpoint, `run_dir/checkpoints/step-000120/`:

    adapter/adapter_model.safetensors   the LoRA weights (plain `PeftModel.from_pretrained` loads it)
    adapter/adapter_config.json
    adapter/grpo_ao_oracle.json         the layout it was trained in (`oracle_layout`), when the model carries one
    optimizer.pt  scheduler.pt          state dicts
    rng.pt                              python `random`, numpy, torch CPU and CUDA generator states
    rng-rank1.pt ...                    the same for ranks 1.. of a data-parallel run
    trainer_state.json                  the trainer's dict (step, data position, judge cache path, ...)
    COMPLETE                            written last; a directory without it is never loaded

Everything is written into a hidden temp directory next to the final one and renamed into place,
so a crash leaves either the old checkpoints or the new complete one, never a half-written
`step-*`. In a data-parallel run every rank calls `save_checkpoint` and `load_checkpoint`: rank 0
writes (every rank holds the same adapter and optimizer state, checked before writing), each rank
restores its own RNG state. We do not save the base model (it is read from its own source again) and we do not push
anything to the Hub unless `push_to_hub` is called with an explicit repository.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_ao.distributed import barrier, check_replicas_agree, gather_objects, place
from grpo_ao.errors import GrpoAoError
from grpo_ao.oracle_layout import attached_layout, write_layout

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
COMPLETE_MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_TMP_PREFIX = ".tmp-"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    trainer_state: dict,
    keep_last: int | None = 3,
    adapter_name: str = "default",
) -> Path:
    """Write `run_dir/checkpoints/step-{step:06d}/` atomically and prune old checkpoints.

    1. write every file into a temp dir in `run_dir/checkpoints/`, COMPLETE last;
    2. rename it to its final name (replacing an earlier save of the same step);
    3. delete complete checkpoints beyond the newest `keep_last` and temp dirs left by crashes.

    Data parallel: every rank calls it (a collective). The ranks' adapters are checked to agree and their
    RNG states gathered; rank 0 does steps 1-3 while the others wait; all return the same path.

    Args:
        run_dir: the run directory.
        step: the optimizer step just finished.
        model: a `peft.PeftModel`; only its adapter `adapter_name` is saved.
        optimizer: saved with `state_dict()`; None skips it.
        scheduler: an LR scheduler with `state_dict()`; None skips it.
        trainer_state: JSON-serialisable dict; `step` is added when missing.
        keep_last: how many complete checkpoints to keep (>= 1), None keeps all.
        adapter_name: the peft adapter to save (the trained one, not a frozen KL reference).

    Returns:
        The final checkpoint directory.
    """
    if keep_last is not None and keep_last < 1:
        raise GrpoAoError(f"keep_last={keep_last}: keep at least 1 checkpoint (or None to keep all).")
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / f"step-{step:06d}"
    check_replicas_agree([p for p in model.parameters() if p.requires_grad])
    rng_states = gather_objects(_rng_state())
    if place().is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
        try:  # 1. write
            _write(tmp, {"step": step, **trainer_state}, model, optimizer, scheduler, rng_states, adapter_name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _rename(tmp, final, root)  # 2.
        _prune(root, keep_last, newest=final)  # 3.
    barrier()  # no rank reads checkpoints/ (latest_checkpoint) before rank 0 has renamed this one
    return final


def _write(tmp: Path, state: dict, model: Any, optimizer: Any, scheduler: Any, rng_states: list[dict],
           adapter_name: str) -> None:
    """Every file of a checkpoint into `tmp`, COMPLETE last; rank r's RNG state as rng.pt (r = 0) or rng-rank{r}.pt."""
    tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint should read like any directory
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    _save_adapter(model, tmp / ADAPTER_DIR, adapter_name)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, rng in enumerate(rng_states):
        torch.save(rng, tmp / _rng_file(rank))
    (tmp / COMPLETE_MARKER).write_text(f"step {state['step']}\nsaved {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def _rename(tmp: Path, final: Path, root: Path) -> None:
    """tmp -> final; a directory cannot be renamed over a non-empty one, so an old `final` moves aside first."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-{final.name}-", dir=root))
        final.rename(old / final.name)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in `run_dir/checkpoints/`, or None.

    Temp dirs and `step-*` dirs without the COMPLETE marker are ignored.
    """
    complete = _complete_checkpoints(Path(run_dir) / CHECKPOINTS_DIR)
    return complete[-1] if complete else None


def load_checkpoint(
    path: Path,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    adapter_name: str = "default",
) -> dict:
    """Restore a checkpoint written by `save_checkpoint` into existing objects.

    Loads the adapter weights into `model` (a `PeftModel` with the same LoRA config), the optimizer
    and scheduler states (None skips them) and the python/numpy/torch/CUDA RNG states. In a data-parallel
    run each rank restores its own RNG state (rank 0's when the checkpoint has none for it, e.g. it was
    written by fewer processes).

    Returns:
        The trainer state dict saved with the checkpoint.
    """
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise GrpoAoError(
            f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} file); "
            "resume from `latest_checkpoint(run_dir)` or delete the directory."
        )
    _load_adapter(model, path / ADAPTER_DIR, adapter_name)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / _rng_file(place().rank)
    _set_rng_state(torch.load(rng_file if rng_file.is_file() else path / _rng_file(0), weights_only=True))
    return json.loads((path / "trainer_state.json").read_text())


def push_to_hub(adapter_dir: Path, repo_id: str, private: bool = True) -> str:
    """Upload an adapter directory to the Hugging Face Hub; returns the repository URL.

    Only called when the config names `repo_id` explicitly. Needs `huggingface_hub` and a token
    (`HF_TOKEN` or `huggingface-cli login`). Any failure becomes a `GrpoAoError`.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise GrpoAoError(f"Cannot push {adapter_dir}: it holds no adapter_config.json (not an adapter).")
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise GrpoAoError("Pushing to the Hub needs huggingface_hub: pip install huggingface_hub") from e
    try:
        api = HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(adapter_dir), repo_id=repo_id, commit_message="grpo-ao adapter")
    except Exception as e:
        raise GrpoAoError(
            f"Pushing {adapter_dir} to the Hub repo {repo_id!r} failed: {e}. Check the network, that "
            "HF_TOKEN (or `huggingface-cli login`) has write access, and the repo name."
        ) from e
    return str(url)


def _save_adapter(model: Any, directory: Path, adapter_name: str) -> None:
    """peft's own format; adapters other than "default" land in a sub-directory named after them. The layout
    attached to `model` (`oracle_layout.attach_layout`) is written beside adapter_config.json."""
    model.save_pretrained(str(directory), selected_adapters=[adapter_name])
    layout = attached_layout(model)
    if layout is not None:
        write_layout(layout, directory if adapter_name == "default" else directory / adapter_name)


def _load_adapter(model: Any, directory: Path, adapter_name: str) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if adapter_name != "default":
        directory = directory / adapter_name
    weights = directory / "adapter_model.safetensors"
    if not weights.is_file():
        raise GrpoAoError(f"No adapter weights at {weights}; the checkpoint is damaged.")
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name=adapter_name)
    if result.unexpected_keys:
        raise GrpoAoError(
            f"The adapter in {directory} does not fit the model ({len(result.unexpected_keys)} unexpected "
            f"keys, e.g. {result.unexpected_keys[0]}); use the same LoRA config as the run that saved it."
        )


def _rng_state() -> dict:
    """All generator states, as plain tensors/lists so `torch.load(weights_only=True)` reads them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _complete_checkpoints(root: Path) -> list[Path]:
    """Complete `step-*` dirs under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def _prune(root: Path, keep_last: int | None, newest: Path) -> None:
    """Delete complete checkpoints beyond the newest `keep_last` (never `newest`) and stale temp dirs."""
    for child in root.iterdir():
        if child.name.startswith(_TMP_PREFIX) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)  # left by a crash; one trainer writes a run dir
    if keep_last is None:
        return
    complete = _complete_checkpoints(root)
    for old in complete[: max(len(complete) - keep_last, 0)]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)
