"""What a stage does with the adapters it starts from and the ones it writes: their layout files and hub pushes.

Layouts (`grpo_ao_oracle.json`, see `grpo_ao.oracle_layout`):
- every stage that trains attaches the layout it trains in (`written_layout`), so each checkpoint's adapter
  carries it: ao_sft the base-oracle layout (no system prompt), sft and grpo `oracle.*`;
- eval and observe ask an adapter in the prompt layout its file records (`cfg_for_adapter`);
- sft and grpo compare their starting adapter's file with the config (`check_start_layout`): a PROMPT field that
  differs stops the run with a `GrpoAoError`, unless `oracle.layout_from_adapter=false` (then the config wins,
  printed). DATA fields (layer percents, K range, context format, base model) come from the data and model
  config: a difference is printed as a warning, because training or asking an oracle on other layers or K can
  be deliberate and the prompt it sees is unchanged.

Pushes (`logging.push_to_hub`): run last, after everything is written; a failure prints the error and the
command that retries it, and the others are still tried.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from grpo_ao.config import OracleConfig, RunConfig
from grpo_ao.data import DataConfig
from grpo_ao.distributed import place, print0
from grpo_ao.errors import GrpoAoError
from grpo_ao.oracle_layout import (
    DATA_FIELDS,
    PROMPT_FIELDS,
    OracleLayout,
    differences,
    layout_of,
    read_layout,
)
from grpo_ao.recipes.setup import oracle_spec
from grpo_ao.rollout import OracleSpec

HUB_SUFFIX = {"grpo": "", "sft": "-sft", "ao_sft": "-ao"}
"""logging.push_to_hub = org/name: the repo of each stage's adapter is org/name + suffix."""
SFT_MUST_MATCH = ("injection_layer", "steering_coef", "vector_preprocessing")
"""Format SFT changes the prompt layout (that is its job) but not which vectors are injected where, how strongly."""


def written_layout(cfg: RunConfig, stage: str, spec: OracleSpec | None = None) -> OracleLayout:
    """The layout of the adapters `stage` writes: the prompt layout it trains in (`spec`, default
    `oracle_spec(cfg)`), the data's layer/K drawing and context format, the base model."""
    return layout_of(oracle_spec(cfg) if spec is None else spec, cfg.data, cfg.model.source, stage)


def _warn_data(where: str, layout: OracleLayout, config: OracleLayout) -> None:
    diffs = differences(layout, config, DATA_FIELDS)
    if diffs:
        print0(f"Warning: {where} was trained with other data settings than this config's ({'; '.join(diffs)}); "
               "layers and K are drawn from the data config, so it is asked about ones it may not have seen.")


def cfg_for_adapter(cfg: RunConfig, adapter: str | None, data: DataConfig | None = None,
                    label: str | None = None) -> RunConfig:
    """`cfg` with `oracle.*` set to the prompt layout `adapter`'s grpo_ao_oracle.json records (eval and observe
    ask each adapter the way it was trained); `cfg` itself when it has no file, or with
    oracle.layout_from_adapter=false. Either way a difference from the config is printed."""
    layout = read_layout(adapter)
    if layout is None:
        return cfg
    where = f"adapter {label or adapter!r}"
    config = layout_of(oracle_spec(cfg, data), cfg.data if data is None else data, cfg.model.source, "config")
    _warn_data(where, layout, config)
    diffs = differences(layout, config, PROMPT_FIELDS)
    if not diffs:
        return cfg
    if not cfg.oracle.layout_from_adapter:
        print0(f"Asking {where} in the config's oracle.* layout (oracle.layout_from_adapter=false), not the one it "
               f"was trained in: {'; '.join(diffs)}.")
        return cfg
    print0(f"Asking {where} in the layout it was trained in ({'; '.join(diffs)}).")
    oracle = OracleConfig(system_prompt=layout.system_prompt or "none", system_prompt_mode=layout.system_prompt_mode,
                          injection_layer=layout.injection_layer, steering_coef=layout.steering_coef,
                          vector_preprocessing=layout.vector_preprocessing, layout_from_adapter=True)
    return replace(cfg, oracle=oracle)


def check_start_layout(cfg: RunConfig, stage: str, must_match: tuple[str, ...] = PROMPT_FIELDS) -> OracleLayout | None:
    """Compare the layout of the adapter `stage` starts from (model.adapter) with the config; returns it (None: no
    file). A field in `must_match` that differs is a `GrpoAoError` (exit 2) naming both values and both fixes,
    unless oracle.layout_from_adapter=false (printed)."""
    layout = read_layout(cfg.model.adapter)
    if layout is None:
        return None
    where = f"the starting adapter model.adapter={cfg.model.adapter!r}"
    config = written_layout(cfg, "config")
    _warn_data(where, layout, config)
    diffs = differences(layout, config, must_match)
    if diffs and cfg.oracle.layout_from_adapter:
        fixes = " ".join(f"oracle.{name}={_value(getattr(layout, name))}"
                         for name in must_match if getattr(layout, name) != getattr(config, name))
        raise GrpoAoError(f"{stage}: {where} was trained in another oracle layout than oracle.* ({'; '.join(diffs)}, "
                          f"from its grpo_ao_oracle.json). Ask it the way it was trained: {fixes}; or train it in "
                          "the config's layout anyway: oracle.layout_from_adapter=false.")
    if diffs:
        print0(f"{stage}: training {where} in the config's oracle.* layout (oracle.layout_from_adapter=false), not "
               f"the one it was trained in: {'; '.join(diffs)}.")
    return layout


def _value(value: Any) -> str:
    if value is None:
        return "none"
    return repr(value) if isinstance(value, str) and (" " in value or "\n" in value) else str(value)


def natural_answer_spec(cfg: RunConfig, start: OracleLayout | None) -> OracleSpec:
    """The layout format SFT asks its starting oracle for natural answers in: the one its file records (with
    oracle.layout_from_adapter), else the base-oracle layout (no system prompt). Injection from the config,
    which `check_start_layout` has compared."""
    base = oracle_spec(cfg).without_system_prompt()
    if start is None or not cfg.oracle.layout_from_adapter:
        return base
    return replace(base, system_prompt=start.system_prompt, mode=start.system_prompt_mode)


# ---------------------------------------------------------------------------- hub pushes

def hub_repo(cfg: RunConfig, stage: str) -> str | None:
    """Where `stage`'s adapter is pushed: logging.push_to_hub + HUB_SUFFIX[stage]; None = no push."""
    return cfg.logging.push_to_hub + HUB_SUFFIX[stage] if cfg.logging.push_to_hub else None


def push_adapters(cfg: RunConfig, adapters: dict[str, str | None]) -> list[str]:
    """Push each stage's final adapter ({stage: adapter dir}) to `hub_repo(cfg, stage)`, on rank 0. Called last:
    every push is tried; a failure prints its error and the `grpo-ao push` command that retries it. Returns the
    pushed URLs; raises one `GrpoAoError` listing the failed pushes (exit 2) after trying all."""
    from grpo_ao import checkpoint

    if not cfg.logging.push_to_hub or not place().is_main:
        return []
    urls, failed = [], []
    for stage, adapter in adapters.items():
        if adapter is None:
            continue
        repo = hub_repo(cfg, stage)
        retry = f"grpo-ao push {adapter} {repo}"
        try:
            urls.append(checkpoint.push_to_hub(adapter, repo))
            print(f"Pushed the {stage} adapter {adapter} to {urls[-1]}")
        except GrpoAoError as e:
            print(f"grpo-ao: push failed: {e}\nNothing else is lost (the adapter, summary and eval are written). "
                  f"Retry with:\n  {retry}", file=sys.stderr)
            failed.append(retry)
    if failed:
        raise GrpoAoError(f"{len(failed)} of {len(failed) + len(urls)} hub pushes failed (see above); the run's "
                          "outputs are complete. Retry with: " + " ; ".join(failed))
    return urls
