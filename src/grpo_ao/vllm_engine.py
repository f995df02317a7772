"""`grpo_ao.vllm_engine`: the names the trainer imports; the code lives in the `grpo_ao.vllm` package."""

from grpo_ao.vllm import ParityReport, VllmEngine, save_for_vllm

__all__ = ["ParityReport", "VllmEngine", "save_for_vllm"]
