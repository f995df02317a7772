"""The vLLM rollout engine (`rollout.engine=vllm`). Importing this package does not import vLLM.

- `engine.VllmEngine`: sampling with per-request injection, weight sync, parity check.
- `weights.save_for_vllm`: the base checkpoint the engine loads.
- `models`: the injecting vLLM model classes (imported inside vLLM only).
"""

from grpo_ao.vllm.engine import ParityReport, VllmEngine
from grpo_ao.vllm.weights import save_for_vllm

__all__ = ["ParityReport", "VllmEngine", "save_for_vllm"]
