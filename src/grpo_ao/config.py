"""Typed run configuration: one frozen dataclass per concern, loaded from YAML with `key=value` overrides.

Every field has its docstring under it (that is the documentation). Values are validated once, here
and in each dataclass's `__post_init__`, with messages that name the field, the value and the fix.
Shipped configs (`tiny`, `smollm2`, `qwen3-8b`) live in `grpo_ao/configs/*.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from grpo_ao.data import DataConfig
from grpo_ao.errors import GrpoAoError, require
from grpo_ao.format import ORACLE_SYSTEM_PROMPT, SYSTEM_PROMPT_MODES
from grpo_ao.judge import JudgeConfig
from grpo_ao.models import LoraSettings, ModelConfig
from grpo_ao.reward import RewardConfig
from grpo_ao.rollout import SamplingConfig


@dataclass(frozen=True)
class OracleConfig:
    """How the oracle is prompted and steered (the same in SFT, GRPO, observe and eval)."""

    system_prompt: str = "epistemic"
    """`epistemic` (the published epistemic-status instruction), `none`, or a literal prompt text."""
    system_prompt_mode: str = "merged"
    """none | merged (system prompt + blank line + prefix in the user turn) | system_role."""
    injection_layer: int = 1
    """Oracle decoder block whose output receives the activations."""
    steering_coef: float = 1.0
    """c in h' = h + c·||h||·v/||v||."""

    def __post_init__(self) -> None:
        require(self.system_prompt_mode in SYSTEM_PROMPT_MODES,
               f"oracle.system_prompt_mode={self.system_prompt_mode!r}; use one of {SYSTEM_PROMPT_MODES}.")
        require(self.injection_layer >= 0, f"oracle.injection_layer={self.injection_layer} must be >= 0.")

    @property
    def prompt_text(self) -> str | None:
        """The system prompt text, or None when the oracle gets none."""
        if self.system_prompt == "none" or self.system_prompt_mode == "none":
            return None
        return ORACLE_SYSTEM_PROMPT if self.system_prompt == "epistemic" else self.system_prompt


@dataclass(frozen=True)
class GrpoConfig:
    """Dr. GRPO optimisation. One optimizer step sees prompts_per_step × grad_accum_steps prompts."""

    max_steps: int = 100
    """Optimizer steps."""
    prompts_per_step: int = 4
    """B, prompts per accumulation step (each gets G rollouts)."""
    grad_accum_steps: int = 2
    """Accumulation steps per optimizer step."""
    micro_batch_size: int = 8
    """Rollouts per training forward (memory knob; does not change the loss)."""
    lr: float = 3e-6
    """AdamW learning rate on the LoRA parameters."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: str = "constant"
    """constant | linear | cosine (after warm-up)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    epsilon: float = 0.2
    """PPO clip range below 1."""
    epsilon_high: float | None = None
    """PPO clip range above 1 (DAPO clip-higher); None = epsilon."""
    beta: float = 0.0
    """KL penalty (k3 estimator) against the starting adapter; 0 turns it off."""
    loss_type: str = "dr_grpo"
    """dr_grpo (token sum / (rollouts × max_new_tokens)) | grpo (per-sequence mean) | dapo (token mean)."""
    scale_rewards: str = "none"
    """none (Dr. GRPO) | group | batch: divide advantages by that std."""
    num_iterations: int = 1
    """Updates per rollout batch; > 1 needs the old-logprob pass and the clipped ratio."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (works with the injection hook)."""
    max_judge_outage_steps: int = 3
    """Stop with an error after this many consecutive steps in which every judge call failed (0 = never)."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "prompts_per_step", "grad_accum_steps", "micro_batch_size", "num_iterations"):
            require(getattr(self, name) >= 1, f"grpo.{name}={getattr(self, name)} must be >= 1.")
        require(self.lr > 0, f"grpo.lr={self.lr} must be > 0.")
        require(self.lr_schedule in ("constant", "linear", "cosine"),
               f"grpo.lr_schedule={self.lr_schedule!r}; use constant, linear or cosine.")
        require(self.loss_type in ("dr_grpo", "grpo", "dapo"),
               f"grpo.loss_type={self.loss_type!r}; use dr_grpo, grpo or dapo.")
        require(self.scale_rewards in ("none", "group", "batch"),
               f"grpo.scale_rewards={self.scale_rewards!r}; use none, group or batch.")
        require(self.beta >= 0, f"grpo.beta={self.beta} must be >= 0.")


@dataclass(frozen=True)
class SftConfig:
    """Format SFT: the oracle's own answers with a random `[epistemic status: X]` tag, teacher-forced."""

    num_examples: int = 256
    """Training targets to generate (example, question pairs)."""
    heldout_examples: int = 32
    """Held-out prompts for the parse rate before/after."""
    epochs: int = 3
    """Passes over the generated targets."""
    batch_size: int = 8
    """Sequences per optimizer step."""
    lr: float = 2e-4
    """AdamW learning rate."""
    warmup_steps: int = 5
    """Linear warm-up steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    answer_max_new_tokens: int = 48
    """Length cap of the oracle's natural answers used as targets."""
    expand_open_answers: bool = False
    """Rewrite terse answers to open questions into one or two sentences with the hosted judge model
    (needs judge.kind=openai and network; same client, retries and cache file as the judge). The rewrite
    keeps the oracle's claims and adds no facts. Rule: `grpo_ao.judge.expand`."""
    expand_max_words: int = 6
    """With expand_open_answers: an answer to an open question (reference not Yes/No, question not opening
    with Is/Are/Does/Do/Did/Was/Were/Can/Could/Will/Would/Has/Have/Should) is terse below this many words."""

    def __post_init__(self) -> None:
        for name in ("num_examples", "heldout_examples", "epochs", "batch_size", "answer_max_new_tokens",
                     "expand_max_words"):
            require(getattr(self, name) >= 1, f"sft.{name}={getattr(self, name)} must be >= 1.")


@dataclass(frozen=True)
class EvalConfig:
    """Calibration evaluation."""

    data: DataConfig = field(default_factory=lambda: DataConfig(source="builtin_eval", split="eval"))
    """The eval set (default: the built-in labelled yes/no set)."""
    num_examples: int = 200
    """Eval items (at most this many, in a fixed order)."""
    greedy: bool = True
    """Greedy decoding; False samples with the sampling settings."""
    max_new_tokens: int = 48
    """Answer length cap."""
    batch_size: int = 16
    """Prompts per generate call."""

    def __post_init__(self) -> None:
        require(self.num_examples >= 1, f"eval.num_examples={self.num_examples} must be >= 1.")


@dataclass(frozen=True)
class LoggingConfig:
    """Run directory, metrics sinks, samples and checkpoints."""

    output_dir: str | None = None
    """Run directory; default runs/<name>."""
    samples_every: int = 5
    """Write a samples file every N steps (0 = never)."""
    checkpoint_every: int = 50
    """Checkpoint every N optimizer steps (and always at the end)."""
    keep_last: int = 3
    """Complete checkpoints kept."""
    tensorboard: bool = False
    """Also log to TensorBoard (run_dir/tb)."""
    wandb_project: str | None = None
    """Also log to Weights & Biases under this project (needs WANDB_API_KEY)."""
    push_to_hub: str | None = None
    """Hub repo id to push the final adapter to; None = never push."""
    progress: bool = True
    """Show progress bars."""


@dataclass(frozen=True)
class RunConfig:
    """A whole run: models, data, judge, reward and each stage's settings."""

    name: str = "run"
    """Run name; the run directory is runs/<name> unless logging.output_dir says otherwise."""
    seed: int = 0
    """Global seed (torch, numpy, python)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model (subject and oracle share it)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Shape of a fresh LoRA adapter."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    """Prompt layout and injection."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Informativeness judge."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Calibration reward."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Rollout sampling."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """GRPO optimisation."""
    sft: SftConfig = field(default_factory=SftConfig)
    """Format SFT stage."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation stage."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Outputs."""
    stages: tuple[str, ...] = ("sft", "grpo", "eval")
    """What `grpo-ao run` does, in order."""

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in ("sft", "grpo", "eval")]
        require(not bad, f"stages={list(self.stages)} has unknown stages {bad}; use sft, grpo, eval.")
        require(not self.sampling.greedy, "sampling.greedy=true would make the G rollouts of a prompt identical "
               "(no reward spread, no gradient); GRPO needs sampling. Use eval.greedy for greedy evaluation.")
        require(not (self.reward.target == "correctness" and self.judge.kind == "openai"
                    and not self.judge.with_correctness),
               "reward.target=correctness needs the judge's correct/incorrect verdict: set "
               "judge.with_correctness=true (or use reward.target=informativeness).")

    @property
    def run_dir(self) -> Path:
        return Path(self.logging.output_dir or Path("runs") / self.name)


# ---------------------------------------------------------------------------- loading

def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        require(isinstance(value, dict), f"{where} must be a mapping of fields, got {value!r}.")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is tuple:
        require(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}.")
        return tuple(_convert(typing.get_args(tp)[0], v, where) for v in value)
    if tp is bool:
        require(isinstance(value, bool), f"{where} must be true or false, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r}.")
        return float(value)
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}.")
        return value
    if tp is str:
        require(isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{where} must be a string, got {value!r}.")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Known fields: {', '.join(names)}."
            raise GrpoAoError(f"Unknown config field {path!r}.{hint}")
        kwargs[key] = _convert(hints[key], value, path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def shipped_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("grpo_ao.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if name_or_path in shipped_configs():
        text = resources.files("grpo_ao.configs").joinpath(f"{name_or_path}.yaml").read_text()
    elif path.is_file():
        text = path.read_text()
    else:
        raise GrpoAoError(
            f"Config {name_or_path!r} is neither a shipped config ({', '.join(shipped_configs())}) nor a "
            "YAML file. Write one with `grpo-ao config show tiny > mine.yaml`."
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise GrpoAoError(f"Config {name_or_path!r} is not valid YAML: {e}") from e
    require(isinstance(data, dict), f"Config {name_or_path!r} must be a YAML mapping at the top level.")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict, in place."""
    require("=" in override, f"Override {override!r} must look like key=value, e.g. grpo.lr=1e-5.")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        require(isinstance(node, dict), f"Override {override!r}: {p!r} is not a section.")
    node[parts[-1]] = value


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a shipped config name or YAML path, apply overrides, validate."""
    data = _read_yaml(name_or_path)
    for o in overrides:
        apply_override(data, o)
    return from_dict(RunConfig, data)


# ---------------------------------------------------------------------------- reference docs

def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (read from its source)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def config_reference() -> str:
    """Markdown reference of every config field: name, default and its docstring (docs/config.md)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def shown(value: Any) -> str:
        if isinstance(value, dict):
            return "(section: same fields as `data`)"
        return "(long text)" if isinstance(value, str) and len(value) > 60 else f"`{value}`"

    defaults, docs = to_dict(RunConfig()), field_docs(RunConfig)
    hints = typing.get_type_hints(RunConfig)
    lines = ["# Configuration reference", "",
             "Generated from the config dataclasses (`grpo-ao config docs`); a test keeps this file current.",
             "Override any field on the command line as `section.field=value`.", "",
             "## top level", "", "| field | default | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {shown(defaults[f.name])} | {cell(docs.get(f.name, ''))} |"
              for f in dataclasses.fields(RunConfig) if not dataclasses.is_dataclass(hints[f.name])]
    for f in dataclasses.fields(RunConfig):
        section = hints[f.name]
        if not dataclasses.is_dataclass(section):
            continue
        sub_docs = field_docs(section)
        lines += ["", f"## {f.name}", "", docs.get(f.name, ""), "", "| field | default | meaning |", "|---|---|---|"]
        lines += [f"| `{f.name}.{g.name}` | {shown(defaults[f.name][g.name])} | {cell(sub_docs.get(g.name, ''))} |"
                  for g in dataclasses.fields(section)]
    return "\n".join(lines) + "\n"
