"""The vLLM rollout engine (`rollout.engine=vllm`). Importing this package does not import vLLM.

- `engine.VllmEngine`: sampling with per-request injection and seeds, weight sync, parity check (`parity`).
- `requests`: one request's prompt, cache salt, injection and seed; one completion's mask (no vLLM import).
- `parity`: the parity check against the HF training forward.
- `weights.save_for_vllm`: the base checkpoint the engine loads.
- `models`: the injecting vLLM model classes (imported inside vLLM only).
"""

from grpo_ao.vllm.engine import VllmEngine
from grpo_ao.vllm.parity import ParityReport
from grpo_ao.vllm.weights import save_for_vllm

__all__ = ["ParityReport", "VllmEngine", "save_for_vllm"]
