"""Typed run configuration: one frozen dataclass per concern, loaded from YAML with `key=value` overrides.

Every field has its docstring under it (that is the documentation). Values are validated once, here
and in each dataclass's `__post_init__`, with messages that name the field, the value and the fix.
Shipped configs (`tiny`, `smollm2`, `qwen3-8b`) live in `grpo_ao/configs/*.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from grpo_ao.data import DataConfig, load_examples
from grpo_ao.data.config import BUILTIN_SOURCES
from grpo_ao.errors import GrpoAoError, require
from grpo_ao.format import ORACLE_SYSTEM_PROMPT, SYSTEM_PROMPT_MODES
from grpo_ao.judge import JudgeConfig
from grpo_ao.models import LoraSettings, ModelConfig
from grpo_ao.reward import RewardConfig
from grpo_ao.rollout import SamplingConfig
from grpo_ao.rollout_config import RolloutConfig
from grpo_ao.steering import VECTOR_PREPROCESSING

STAGES = ("ao_sft", "sft", "grpo", "eval")
"""The stages `grpo-ao run` knows, in the only order it runs them."""
ADVANTAGE_ROUTINGS = ("sequence", "split", "tag")
LR_SCHEDULES = ("constant", "linear", "cosine")


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
    vector_preprocessing: str = "none"
    """What is done to each subject vector v before the injection: `none` (the raw block output, as the published
    oracles were trained) or `center` (v minus the subject's mean block output at that layer, `steering.subject_means`:
    on SmolLM2-135M 55-93 % of a raw vector's direction is shared by all contexts, docs/RESULTS.md). An adapter
    records it in its layout file; a stage that starts from it must use the same."""
    layout_from_adapter: bool = True
    """What an adapter's own layout file (grpo_ao_oracle.json beside adapter_config.json, written by every
    grpo-ao stage) decides. true: `eval` and `observe` ask each adapter in the prompt layout its file records
    (system prompt mode and text, injection layer, steering coefficient, vector preprocessing) and print where
    that differs from oracle.*; `sft` generates its natural answers in the starting adapter's layout and stops with
    an error when its injection layer, coefficient or vector preprocessing differ from oracle.*; `grpo` stops with
    an error when any of the five differ. false: every stage uses oracle.* for every adapter and prints the differences. Layer percents, K
    range, context format and base model always come from the data and model config (a difference is a printed
    warning, never an error). An adapter without the file (e.g. a hub adapter grpo-ao did not write) uses
    oracle.*."""

    def __post_init__(self) -> None:
        require(self.system_prompt_mode in SYSTEM_PROMPT_MODES,
               f"oracle.system_prompt_mode={self.system_prompt_mode!r}; use one of {SYSTEM_PROMPT_MODES}.")
        require(self.injection_layer >= 0, f"oracle.injection_layer={self.injection_layer} must be >= 0.")
        require(math.isfinite(self.steering_coef),
               f"oracle.steering_coef={self.steering_coef} must be a finite number (1.0 is the published setting).")
        require(self.vector_preprocessing in VECTOR_PREPROCESSING,
               f"oracle.vector_preprocessing={self.vector_preprocessing!r}; use one of {VECTOR_PREPROCESSING}.")

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
    """KL penalty (k3 estimator) against the starting adapter; 0 turns it off. With tag_expectation it applies to
    every completion token but the tag's (the tag term trains those), so it holds the answers, not the confidence."""
    loss_type: str = "dr_grpo"
    """dr_grpo (token sum / (rollouts × max_new_tokens)) | grpo (per-sequence mean) | dapo (token mean)."""
    scale_rewards: str = "none"
    """none (Dr. GRPO) | group | batch: divide advantages by that std."""
    num_iterations: int = 1
    """Updates per rollout batch; > 1 needs the old-logprob pass and the clipped ratio."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (works with the injection hook)."""
    prefix_shared_forward: bool = True
    """The training, old-policy and reference forwards run each prompt once (with its injection) and its G
    completions on its KV cache: B·P + N·T tokens instead of N·(P+T), the same logprobs and gradients. Inactive
    in train mode while gradient_checkpointing is on (transformers drops the KV cache then; logged once)."""
    max_judge_outage_steps: int = 3
    """Stop with an error after this many consecutive steps in which every judge call failed (0 = never)."""
    advantage_routing: str = "sequence"
    """sequence | split | tag. With split, the tokens of the `[epistemic status: X]` tag get the group advantage
    of the calibration part of the reward (−λ·(X/10 − target)²) and the answer tokens the group advantage of the
    informativeness part; with tag, the tag tokens get the same and the answer tokens none (only the stated
    confidence is trained, the answers stay the starting oracle's). Parse failures keep the sequence advantage."""
    tag_expectation: bool = False
    """With advantage_routing split or tag: train the tag with the exact expectation of its calibration reward over
    the 11 values of X (`loss.expected_tag_loss`: π(X | prompt) times −λ·(X/10 − target)² for each judged
    rollout's target) instead of crediting the one X each rollout sampled. Same gradient in expectation, no
    sampling noise in X, and a tag whose samples all agree still learns (the sampled advantage is then 0)."""
    tag_entropy: float = 0.0
    """With tag_expectation: α, an entropy bonus α·H(π) on the tag's distribution over its 11 values per prompt
    (`loss.expected_tag_loss`). The best tag stays the same; the distribution stays soft enough for prompts whose
    targets differ from the batch's to move it (without it the tag sharpened on one value for every prompt).
    0 turns it off; about 0.01 keeps π(X) ∝ exp(−E[(X/10 − t)²]/α) spread over ±1–2 values."""
    format_anchor: float = 0.0
    """With tag_expectation: weight of the negative log-likelihood of the tag's opening `[epistemic status: ` after
    each prompt (`loss.anchor_loss`), added to the tag term so that moving the stated confidence does not
    move the answer's format (without it the oracle drifted to answering before the tag). 0 turns it off."""
    answer_anchor: float = 0.0
    """With tag_expectation: weight of the teacher-forced negative log-likelihood of each prompt's reference answer
    after its tag (`loss.anchor_loss`; the AO pretraining objective kept on, like InstructGPT's "ptx" term), so that
    moving the stated confidence does not move the answers (without it the oracle's global Yes/No bias swung
    within 30 steps and it stopped reading). Prompts without a reference are skipped. 0 turns it off."""
    answer_anchor_source: str | None = None
    """With answer_anchor: where the anchor's prompts come from. null: the step's own GRPO prompts (their answers are
    then taught too: on a small data.source the oracle learns those contexts' answers, and the tag learns ITS
    accuracy there, not the eval's). A data source (as data.source; read with data.*'s layer percents and K):
    B extra prompts per chunk drawn from it in minimal Yes/No pairs (data.question_draw=pairs), so the anchor
    holds the reading on other contexts (e.g. the AO pretraining set, `builtin`) while the tag learns on
    data.source's prompts."""
    tis_cap: float = 0.0
    """Truncated importance sampling against the rollout engine's own logprobs: each token's policy-gradient term
    is weighted by min(π_train/π_sampler, tis_cap). 0 turns it off (the gap is still logged as
    rollout/logprob_mismatch); with rollout.engine=vllm a cap of about 2 is a common choice."""
    overlap_judge: bool = True
    """Judge chunk k in a background thread while chunk k+1 is rolled out (grad_accum_steps > 1). The update sees
    exactly the same rollouts and scores either way; time/judge_s then counts only the wait that was not hidden."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "prompts_per_step", "grad_accum_steps", "micro_batch_size", "num_iterations"):
            require(getattr(self, name) >= 1, f"grpo.{name}={getattr(self, name)} must be >= 1.")
        require_optimizer("grpo", self.lr, self.warmup_steps, self.max_grad_norm)
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
               f"grpo.weight_decay={self.weight_decay} must be a finite number >= 0.")
        require(0 < self.epsilon < 1, f"grpo.epsilon={self.epsilon} must be in (0, 1): the ratio is clipped to "
               "[1 - epsilon, 1 + epsilon_high]. The usual value is 0.2.")
        require(self.epsilon_high is None or 0 < self.epsilon_high < math.inf,
               f"grpo.epsilon_high={self.epsilon_high} must be a finite number > 0, or null (= epsilon).")
        require(self.max_judge_outage_steps >= 0,
               f"grpo.max_judge_outage_steps={self.max_judge_outage_steps} must be >= 0 (0 = never stop).")
        require(self.lr_schedule in LR_SCHEDULES,
               f"grpo.lr_schedule={self.lr_schedule!r}; use constant, linear or cosine.")
        require(self.loss_type in ("dr_grpo", "grpo", "dapo"),
               f"grpo.loss_type={self.loss_type!r}; use dr_grpo, grpo or dapo.")
        require(self.scale_rewards in ("none", "group", "batch"),
               f"grpo.scale_rewards={self.scale_rewards!r}; use none, group or batch.")
        require(math.isfinite(self.beta) and self.beta >= 0, f"grpo.beta={self.beta} must be a finite number >= 0.")
        require(self.tis_cap == 0 or 1 <= self.tis_cap < math.inf,
               f"grpo.tis_cap={self.tis_cap} must be 0 (off) or a finite number >= 1 (a cap below 1 would shrink "
               "every token's weight).")
        require(self.advantage_routing in ADVANTAGE_ROUTINGS,
               f"grpo.advantage_routing={self.advantage_routing!r}; use sequence, split or tag.")
        for name in ("tag_entropy", "format_anchor", "answer_anchor"):  # the terms of tag_expectation
            value = getattr(self, name)
            require(value >= 0 and math.isfinite(value), f"grpo.{name}={value!r}; use a weight >= 0 (0 turns it off).")
            require(value == 0 or self.tag_expectation,
                   f"grpo.{name}={value} is a term of grpo.tag_expectation: set grpo.tag_expectation=true (with "
                   f"grpo.advantage_routing=tag or split), or grpo.{name}=0.")
        if self.answer_anchor_source is not None:
            require(self.answer_anchor > 0, f"grpo.answer_anchor_source={self.answer_anchor_source!r} is where "
                    "grpo.answer_anchor's prompts come from: set grpo.answer_anchor > 0, or answer_anchor_source=null.")
            try:
                DataConfig(source=self.answer_anchor_source)
            except GrpoAoError as err:
                raise GrpoAoError(f"grpo.answer_anchor_source: {err}".replace("data.source=", "")) from None
        require(not self.tag_expectation or self.advantage_routing != "sequence",
               "grpo.tag_expectation=true needs the tag trained on its own: set grpo.advantage_routing=tag (or split).")


@dataclass(frozen=True)
class AoSftConfig:
    """AO pretraining (`grpo-ao ao-sft`): teacher-forced (activations → reference answer) on classification
    items plus self-supervised context prediction, for models without a published oracle."""

    num_examples: int = 2048
    """Training items."""
    heldout_examples: int = 128
    """Held-out items, drawn from held-out examples disjoint from the training ones."""
    heldout_contexts: int = 24
    """Contexts of data.source reserved for the held-out items, never trained on."""
    context_prediction_frac: float = 0.25
    """Share of items that are self-supervised context prediction (predict k tokens next to the read ones)."""
    context_prediction_tokens: int = 4
    """k, tokens to predict (next or previous) in a context-prediction item."""
    epochs: int = 2
    """Passes over the training items."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    lr: float = 1e-5
    """AdamW learning rate. The default is the Activation Oracles recipe's for LoRA r=64/α=128 on every linear
    layer (with batch 16, 10 % warm-up and linear decay); a small LoRA on a small model needs far more (the tiny
    and smollm2 configs use 1e-3)."""
    lr_schedule: str = "linear"
    """constant | linear | cosine: the decay after the warm-up (the recipe: linear, to 0 at the last step)."""
    warmup_steps: int | None = None
    """Linear warm-up steps; null = ao_sft.warmup_fraction of the run's optimizer steps."""
    warmup_fraction: float = 0.1
    """Share of the optimizer steps spent in linear warm-up when ao_sft.warmup_steps is null (rounded to whole
    steps; the recipe: 10 %)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_answer_tokens: int = 12
    """Cap on the tokens of a teacher-forced answer."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (works with the injection hook); saves memory on large models."""
    open_frac: float = 0.4
    """Share of training items that are open label questions ("What is the topic of this text?"); the rest,
    after context prediction, are yes/no questions. Rule: `grpo_ao.ao_tasks`."""
    yes_no_sampling: str = "balanced"
    """"balanced": pick a yes/no question text uniformly, then Yes or No with p = 0.5, then a context with
    that answer; "family": as balanced, but first a family uniformly, then one of its question texts (a family
    with few wordings gets as many items as one with many); "natural": a (context, yes/no question) pair
    uniformly, the data's own answer frequencies."""
    yes_no_pairs: bool = False
    """Draw yes/no items in minimal pairs: each drawn item with a partner asking the SAME question of a context
    whose answer is the other one, kept next to it in every epoch's order and in the same batch. A batch then
    answers each of its yes/no questions Yes and No equally often, so its gradient carries no per-question
    answer bias, only the question x activation part. Needs an even ao_sft.batch_size. Rule: `grpo_ao.ao_tasks`."""
    max_positions: int | None = None
    """Largest K of the training items (K uniform in [data.min_positions, this]); null = data.max_positions.
    Held-out items always use data.min_positions..data.max_positions, as the later stages read."""
    position_jitter: int = 0
    """Training items' K vectors end 0..position_jitter tokens (uniform) before the end of the text, as in the
    Activation Oracles recipe; 0 = always the last K tokens. Held-out items read the last K tokens."""
    heldout_source: str | None = None
    """A data source (as data.source) whose contexts are the held-out set, e.g. "builtin_heldout"; training
    contexts with the same text are dropped. null: hold out `heldout_contexts` random contexts of data.source."""
    eval_every: int = 0
    """Learning curve: every this many steps, the cheap held-out check (Yes vs No first-token logit; open
    questions: the candidate answers' logprob), real vs counterfactual, per family. 0 = only before and after."""

    def __post_init__(self) -> None:
        for name in ("num_examples", "heldout_examples", "heldout_contexts", "context_prediction_tokens", "epochs",
                     "batch_size", "max_answer_tokens"):
            require(getattr(self, name) >= 1, f"ao_sft.{name}={getattr(self, name)} must be >= 1.")
        require(0 <= self.context_prediction_frac < 1,
               f"ao_sft.context_prediction_frac={self.context_prediction_frac} must be in [0, 1).")
        require(0 <= self.open_frac <= 1 - self.context_prediction_frac,
                f"ao_sft.open_frac={self.open_frac} must be in [0, 1 - ao_sft.context_prediction_frac] "
                f"(= {1 - self.context_prediction_frac:g}); the rest of the items are yes/no questions.")
        require(self.yes_no_sampling in ("balanced", "family", "natural"),
                f"ao_sft.yes_no_sampling={self.yes_no_sampling!r} must be 'balanced', 'family' or 'natural'.")
        require(not self.yes_no_pairs or self.batch_size % 2 == 0,
                f"ao_sft.yes_no_pairs=true keeps each pair in one batch, so ao_sft.batch_size={self.batch_size} "
                "must be even.")
        require(self.max_positions is None or self.max_positions >= 1,
                f"ao_sft.max_positions={self.max_positions} must be >= 1 or null (data.max_positions).")
        require(self.position_jitter >= 0 and self.eval_every >= 0,
                f"ao_sft.position_jitter={self.position_jitter} and ao_sft.eval_every={self.eval_every} must be >= 0.")
        if self.heldout_source is not None:
            DataConfig(source=self.heldout_source)  # the same rule as data.source; its message names the fix
        require_optimizer("ao_sft", self.lr, 0 if self.warmup_steps is None else self.warmup_steps,
                          self.max_grad_norm)
        require(self.lr_schedule in LR_SCHEDULES,
               f"ao_sft.lr_schedule={self.lr_schedule!r}; use {', '.join(LR_SCHEDULES)}.")
        require(0 <= self.warmup_fraction < 1,
               f"ao_sft.warmup_fraction={self.warmup_fraction} must be in [0, 1) (0.1 = 10 % of the steps).")

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps` optimizer steps: warmup_steps, else
        round(warmup_fraction · total_steps)."""
        return self.warmup_steps if self.warmup_steps is not None else round(self.warmup_fraction * total_steps)


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
    gradient_checkpointing: bool = False
    """Recompute activations in backward (works with the injection hook); saves memory on large models."""

    def __post_init__(self) -> None:
        for name in ("num_examples", "heldout_examples", "epochs", "batch_size", "answer_max_new_tokens",
                     "expand_max_words"):
            require(getattr(self, name) >= 1, f"sft.{name}={getattr(self, name)} must be >= 1.")
        require_optimizer("sft", self.lr, self.warmup_steps, self.max_grad_norm)


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
    """Prompts per generate call (also the batch of SFT target generation and held-out parse rates)."""

    def __post_init__(self) -> None:
        for name in ("num_examples", "max_new_tokens", "batch_size"):
            require(getattr(self, name) >= 1, f"eval.{name}={getattr(self, name)} must be >= 1.")


@dataclass(frozen=True)
class LoggingConfig:
    """Run directory, metrics sinks, samples and checkpoints."""

    output_dir: str | None = None
    """Run directory; default runs/<name>."""
    samples_every: int = 5
    """Write a samples file every N steps (0 = never)."""
    checkpoint_every: int = 50
    """Checkpoint every N optimizer steps (and always at the end); a value >= grpo.max_steps checkpoints only at
    the end."""
    keep_last: int = 3
    """Complete checkpoints kept (>= 1)."""
    tensorboard: bool = False
    """Also log to TensorBoard (run_dir/tb)."""
    wandb_project: str | None = None
    """Also log to Weights & Biases under this project (needs WANDB_API_KEY)."""
    push_to_hub: str | None = None
    """Hub repo id (`org/name`) to push adapters to; None = never push. `grpo` pushes its final adapter to
    `org/name`, `sft` to `org/name-sft`, `ao-sft` to `org/name-ao` (each with its grpo_ao_oracle.json; private
    repos). Pushes run last, after summary.json (and with `grpo-ao run`, after the eval): a failed push loses
    nothing; it prints the error and the `grpo-ao push ADAPTER REPO` command to retry, and the command exits 2."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        require(self.samples_every >= 0, f"logging.samples_every={self.samples_every} must be >= 0 (0 = never).")
        require(self.checkpoint_every >= 1,
               f"logging.checkpoint_every={self.checkpoint_every} must be >= 1; to checkpoint only at the end, "
               "set it to grpo.max_steps or more.")
        require(self.keep_last >= 1, f"logging.keep_last={self.keep_last} must be >= 1 (the final checkpoint is "
               "the trained adapter).")
        require(self.push_to_hub is None or re.fullmatch(r"[\w.-]+/[\w.-]+", self.push_to_hub) is not None,
               f"logging.push_to_hub={self.push_to_hub!r} must be a hub repo id `org/name` (or null: never push).")


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
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout engine (hf | vllm) and the vLLM engine's settings."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """GRPO optimisation."""
    ao_sft: AoSftConfig = field(default_factory=AoSftConfig)
    """AO pretraining stage."""
    sft: SftConfig = field(default_factory=SftConfig)
    """Format SFT stage."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation stage."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Outputs."""
    stages: tuple[str, ...] = ("sft", "grpo", "eval")
    """What `grpo-ao run` does: a subset of ao_sft, sft, grpo, eval, in that order."""

    def __post_init__(self) -> None:
        require(bool(self.stages), f"stages is empty; list at least one of {', '.join(STAGES)}.")
        bad = [s for s in self.stages if s not in STAGES]
        require(not bad, f"stages={list(self.stages)} has unknown stages {bad}; use {', '.join(STAGES)}.")
        in_order = [s for s in STAGES if s in self.stages]
        require(list(self.stages) == in_order,
               f"stages={list(self.stages)} must list each stage once, in the order {', '.join(STAGES)}; "
               f"use {in_order}.")
        require("sft" in self.stages or not {"ao_sft", "grpo"} <= set(self.stages) or self.oracle.prompt_text is None
                or not self.oracle.layout_from_adapter,
               f"stages={list(self.stages)}: ao_sft writes a base oracle (trained without a system prompt), and grpo "
               "would then train it in oracle.*'s layout with a system prompt, which it was not trained in. Add sft "
               "between them (format SFT moves it to oracle.*'s layout), set oracle.system_prompt_mode=none, or "
               "oracle.layout_from_adapter=false to train it with the system prompt anyway.")
        require(not self.sampling.greedy, "sampling.greedy=true would make the G rollouts of a prompt identical "
               "(no reward spread, no gradient); GRPO needs sampling. Use eval.greedy for greedy evaluation.")
        require(self.sampling.num_generations >= 2,
               f"sampling.num_generations={self.sampling.num_generations} must be >= 2: a GRPO advantage is a reward "
               "minus its group's mean, so a group of one has zero advantage and trains nothing. Use 4 or more "
               "(`grpo-ao observe --num-generations 1` looks at single answers without training).")
        require(self.sampling.top_k >= 0, f"sampling.top_k={self.sampling.top_k} must be >= 0 (0 turns top-k off).")
        require(not (self.reward.target == "correctness" and self.judge.kind == "openai"
                    and not self.judge.with_correctness),
               "reward.target=correctness needs the judge's correct/incorrect verdict: set "
               "judge.with_correctness=true (or use reward.target=informativeness).")
        require(not self.sft.expand_open_answers or self.judge.kind == "openai",
               f"sft.expand_open_answers=true rewrites answers with the hosted judge model, but "
               f"judge.kind={self.judge.kind}. Set judge.kind=openai (with judge.base_url, judge.model and the API "
               "key variable), or turn the option off: sft.expand_open_answers=false.")
        require(not (self.rollout.engine == "vllm" and self.model.source == "tiny" and self.model.device == "cpu"),
               "rollout.engine=vllm with model.source=tiny on the CPU: the tiny model's attention heads have size 16 "
               "and vLLM's CPU attention needs 32 or more. Use rollout.engine=hf, or model.source=smollm2.")
        if is_local(self.data):  # cheap to read now; an hf: source is checked by the recipe before model work
            require_data_fits(self, count_contexts(self.data))
        if is_local(self.eval.data):
            count_contexts(self.eval.data)  # the eval set loads and has a valid row
        if self.grpo.answer_anchor_source is not None and is_local(anchor := anchor_data(self)):
            try:  # the anchor's prompts load and have a valid row
                count_contexts(anchor)
            except GrpoAoError as err:
                raise GrpoAoError(str(err).replace("data.source", "grpo.answer_anchor_source")) from None

    @property
    def run_dir(self) -> Path:
        return Path(self.logging.output_dir or Path("runs") / self.name)


def require_optimizer(section: str, lr: float, warmup_steps: int, max_grad_norm: float) -> None:
    """The optimizer fields every training section has: lr > 0, warmup_steps >= 0, max_grad_norm > 0, finite."""
    require(0 < lr < math.inf, f"{section}.lr={lr} must be a finite number > 0.")
    require(warmup_steps >= 0, f"{section}.warmup_steps={warmup_steps} must be >= 0.")
    require(0 < max_grad_norm < math.inf, f"{section}.max_grad_norm={max_grad_norm} must be a finite number > 0 "
           "(the gradient is clipped to this norm).")


@functools.lru_cache(maxsize=8)
def _count_contexts(data: DataConfig, stamp: float) -> int:
    with warnings.catch_warnings():  # bad rows are reported, file:line, when the recipe loads the data
        warnings.simplefilter("ignore")
        return len({ex.context for ex in load_examples(data)})


def anchor_data(cfg: RunConfig) -> DataConfig:
    """Where grpo.answer_anchor's own prompts come from (grpo.answer_anchor_source): data.*'s layer percents, K and
    seed, that source, drawn in minimal Yes/No pairs."""
    return dataclasses.replace(cfg.data, source=cfg.grpo.answer_anchor_source, question_draw="pairs", max_examples=None)


def is_local(data: DataConfig) -> bool:
    """A built-in set or a JSONL file: cheap enough to read while the config loads (an `hf:` source is not)."""
    return data.source in BUILTIN_SOURCES or data.source.endswith(".jsonl")


def count_contexts(data: DataConfig) -> int:
    """Distinct contexts among the valid examples of `data` (read once per file version; `hf:` sources too, so
    call it for those only where loading is acceptable). Contexts too short for data.min_positions tokens are
    counted: they need the tokenizer, and the sampler drops them later with a warning."""
    path = Path(data.source).expanduser()
    return _count_contexts(data, path.stat().st_mtime if path.is_file() else 0.0)


def require_data_fits(cfg: RunConfig, num_contexts: int) -> None:
    """Held-out sets that must not overlap training fit in `num_contexts` distinct contexts of data.source.

    SFT draws its num_examples training and then its heldout_examples held-out tasks from one pass over the
    shuffled examples, so the two are disjoint only when num_examples + heldout_examples <= num_contexts. AO
    pretraining reserves ao_sft.heldout_contexts and needs at least one context left to train on. Checked at load
    for built-in and JSONL sources; a recipe calls it for an `hf:` source once the data is loaded.
    """
    src, sft = cfg.data.source, cfg.sft
    require(sft.num_examples + sft.heldout_examples <= num_contexts,
           f"sft.num_examples + sft.heldout_examples = {sft.num_examples} + {sft.heldout_examples} is more than the "
           f"{num_contexts} contexts of data.source={src!r}, so held-out prompts would repeat training contexts. "
           f"Lower them to a total of at most {num_contexts}, or use more data.")
    require(cfg.ao_sft.heldout_contexts < num_contexts,
           f"ao_sft.heldout_contexts={cfg.ao_sft.heldout_contexts} leaves none of the {num_contexts} contexts of "
           f"data.source={src!r} to train on; use at most {num_contexts - 1}, or more data.")


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
    try:
        return cls(**kwargs)
    except GrpoAoError as e:  # a section reused deeper (eval.data is a DataConfig) names its full path
        name = where.rpartition(".")[2]
        message = str(e)
        if "." not in where or not message.startswith(f"{name}."):
            raise
        raise GrpoAoError(f"{where}{message[len(name):]}") from None


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
