"""The oracle layout an adapter was trained in, written beside it as `grpo_ao_oracle.json`.

An activation oracle only reads well when it is asked the way it was trained: the same system prompt in the
same place, the injection at the same block with the same coefficient. Every adapter grpo-ao writes carries
that layout in a small JSON file next to `adapter_config.json` (the checkpoint writer adds it from the layout
attached to the model, `attach_layout`), and the stages that load an adapter read it (`read_layout`).

Fields of the file (format 1):

    stage                   the grpo-ao stage that wrote the adapter: ao_sft | sft | grpo
    base_model              model.source it was trained on (a name: a local path and a hub id may be the same weights)
    system_prompt_mode      none | merged | system_role (none when there is no system prompt)
    system_prompt           the system prompt text, or null
    injection_layer         oracle decoder block whose output receives the activations
    steering_coef           c in h' = h + c·||h||·v/||v||
    layer_percents          subject layers it was trained on (percent of depth)
    min_positions, max_positions   the K range it was trained on
    context_format          how the subject read its context (chat | raw)
    vector_preprocessing    what was done to the subject vectors before the injection (none: raw block outputs;
                            center: minus the subject's mean at that layer, `steering.subject_means`); absent = none

The four after base_model and vector_preprocessing are PROMPT fields (`oracle.*`: they change what the oracle
sees, so a stage asks in the file's values or stops); the rest are DATA fields, drawn from the data config (a
difference is only a warning).
Nothing here reads the run config; the recipes decide what a difference means (`recipes.setup`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from grpo_ao.errors import GrpoAoError
from grpo_ao.models import resolve_adapter
from grpo_ao.steering import VECTOR_PREPROCESSING

LAYOUT_FILE = "grpo_ao_oracle.json"
LAYOUT_FORMAT = 1
PROMPT_FIELDS = ("system_prompt_mode", "system_prompt", "injection_layer", "steering_coef", "vector_preprocessing")
DATA_FIELDS = ("layer_percents", "min_positions", "max_positions", "context_format", "base_model")
_ATTR = "grpo_ao_oracle_layout"


@dataclass(frozen=True)
class OracleLayout:
    """How an adapter was trained to be asked (the content of its grpo_ao_oracle.json)."""

    stage: str
    base_model: str
    system_prompt_mode: str
    system_prompt: str | None
    injection_layer: int
    steering_coef: float
    layer_percents: tuple[int, ...]
    min_positions: int
    max_positions: int
    context_format: str
    vector_preprocessing: str = "none"
    format: int = LAYOUT_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_percents", tuple(self.layer_percents))
        if self.system_prompt is None:  # no prompt: every mode renders the same, so there is one way to say it
            object.__setattr__(self, "system_prompt_mode", "none")


def layout_of(spec: Any, data: Any, base_model: str, stage: str) -> OracleLayout:
    """The layout of an adapter trained with `spec` (an `rollout.OracleSpec`) on `data` (a `DataConfig`)."""
    return OracleLayout(stage=stage, base_model=base_model, system_prompt_mode=spec.mode,
                        system_prompt=spec.system_prompt, injection_layer=spec.injection_layer,
                        steering_coef=float(spec.coef), layer_percents=data.layer_percents,
                        min_positions=data.min_positions, max_positions=data.max_positions,
                        context_format=data.context_format, vector_preprocessing=spec.vector_preprocessing)


def differences(adapter: OracleLayout, config: OracleLayout, names: tuple[str, ...]) -> list[str]:
    """`name: adapter X, config Y` for each field in `names` whose values differ (long texts shortened).

    >>> a = OracleLayout("ao_sft", "tiny", "none", None, 1, 1.0, (25, 50), 1, 5, "chat")
    >>> differences(a, OracleLayout("sft", "tiny", "merged", "Be brief.", 2, 1.0, (25, 50), 1, 5, "chat"),
    ...             PROMPT_FIELDS)
    ["system_prompt_mode: adapter 'none', config 'merged'", "system_prompt: adapter None, config 'Be brief.'", \
'injection_layer: adapter 1, config 2']
    """
    def shown(value: Any) -> str:
        text = repr(list(value) if isinstance(value, tuple) else value)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{n}: adapter {shown(getattr(adapter, n))}, config {shown(getattr(config, n))}"
            for n in names if getattr(adapter, n) != getattr(config, n)]


def write_layout(layout: OracleLayout, directory: Path) -> Path:
    """`directory/grpo_ao_oracle.json` (directory is an adapter directory)."""
    path = Path(directory) / LAYOUT_FILE
    data = asdict(layout)
    data["layer_percents"] = list(layout.layer_percents)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def parse_layout(data: Any, where: str) -> OracleLayout:
    """An `OracleLayout` from the file's JSON object; a damaged file or one this version cannot honour is a
    `GrpoAoError` naming the file."""
    names = {f.name for f in fields(OracleLayout)}
    required = names - {"vector_preprocessing", "format"}
    if not isinstance(data, dict) or required - set(data):
        missing = sorted(required - set(data)) if isinstance(data, dict) else sorted(required)
        raise GrpoAoError(f"{where} is not a valid {LAYOUT_FILE} (missing {missing}); rewrite it or delete it to "
                          "ask the adapter in the config's oracle.* layout.")
    if int(data.get("format", LAYOUT_FORMAT)) > LAYOUT_FORMAT:
        raise GrpoAoError(f"{where} has format {data['format']}, written by a newer grpo-ao; upgrade grpo-ao.")
    layout = OracleLayout(**{k: v for k, v in data.items() if k in names})
    if layout.vector_preprocessing not in VECTOR_PREPROCESSING:
        raise GrpoAoError(f"{where}: the adapter was trained on vectors preprocessed with "
                          f"{layout.vector_preprocessing!r}, which this grpo-ao cannot do "
                          f"({', '.join(VECTOR_PREPROCESSING)}); upgrade grpo-ao.")
    return layout


def read_layout(adapter: str | None) -> OracleLayout | None:
    """The layout `adapter` (a directory, `builtin:NAME` or a hub id) records; None when it has no file (or
    is None). A hub adapter's file is fetched with huggingface_hub; when it cannot be checked (offline, no
    access), a line says so and None is returned (the config's layout is used)."""
    if adapter is None:
        return None
    path = Path(resolve_adapter(adapter)).expanduser()
    if path.is_dir():
        file = path / LAYOUT_FILE
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise GrpoAoError(f"{file} is not valid JSON ({e}); rewrite it or delete it.") from e
        return parse_layout(data, str(file))
    return _hub_layout(adapter)


def _hub_layout(repo_id: str) -> OracleLayout | None:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        file = hf_hub_download(repo_id, LAYOUT_FILE)
    except EntryNotFoundError as e:
        if not isinstance(e, LocalEntryNotFoundError):
            return None  # the repo has no layout file: not written by grpo-ao, the config's layout applies
        print(f"Could not look for {LAYOUT_FILE} in the hub adapter {repo_id!r} (offline and not cached); "
              "asking it in the config's oracle.* layout.")
        return None
    except Exception as e:  # network, access: the adapter load itself reports those if they persist
        print(f"Could not look for {LAYOUT_FILE} in the hub adapter {repo_id!r} ({type(e).__name__}: "
              f"{str(e)[:200]}); asking it in the config's oracle.* layout.")
        return None
    return parse_layout(json.loads(Path(file).read_text()), f"{repo_id}/{LAYOUT_FILE}")


def attach_layout(model: Any, layout: OracleLayout | None) -> Any:
    """Remember on `model` the layout it is being trained in; the checkpoint writer saves it with the adapter."""
    setattr(model, _ATTR, layout)
    return model


def attached_layout(model: Any) -> OracleLayout | None:
    """The layout `attach_layout` put on `model`, or None."""
    return model.__dict__.get(_ATTR)
