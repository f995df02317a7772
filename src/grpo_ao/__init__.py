"""grpo-ao: train activation oracles with calibrated confidence using Dr. GRPO."""

from grpo_ao.errors import GrpoAoError

__version__ = "0.1.0"
__all__ = ["GrpoAoError", "__version__"]
