"""Data: examples (context + questions + optional references), loaders and the seeded task sampler.

`load_examples(DataConfig(...))` reads the built-in sets, a JSONL file or a Hugging Face data set;
`TaskSampler` turns the examples into a resumable stream of `Task`s (question, layer percent, K).
The JSONL schema is documented in docs/data.md.
"""

from grpo_ao.data.config import DataConfig
from grpo_ao.data.loaders import BadRowWarning, builtin_path, load_examples
from grpo_ao.data.sampler import Task, TaskSampler, split_examples
from grpo_ao.data.schema import QA, BadRow, Example, parse_row, strip_yes_no_instruction

__all__ = [
    "QA",
    "BadRow",
    "BadRowWarning",
    "DataConfig",
    "Example",
    "Task",
    "TaskSampler",
    "builtin_path",
    "load_examples",
    "parse_row",
    "split_examples",
    "strip_yes_no_instruction",
]
