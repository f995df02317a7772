"""Reproduce the shipped SmolLM2 activation oracle, `builtin:smollm2-ao` (src/grpo_ao/resources/adapters/).

    python scripts/make_smollm2_ao.py                 # ~15 min on a 2-core CPU; a minute on a GPU
    python scripts/make_smollm2_ao.py --check         # train into runs/, compare, do not overwrite

It runs exactly `grpo-ao ao-sft --config smollm2 model.adapter=null` (AO pretraining of the bare
SmolLM2-135M-Instruct on the built-in data, settings in the config's `ao_sft` section), then copies the final
adapter and the run's summary (held-out accuracy before → after, real and shuffled) into the package.
`grpo-ao run` starts from that adapter because training it takes longer than the demo's 15-minute budget on
a CPU. The held-out numbers recorded with it are in its `ao_sft_summary.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "grpo_ao" / "resources" / "adapters" / "smollm2-ao"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default=str(ROOT / "runs" / "smollm2-ao"))
    p.add_argument("--config", default="smollm2", help="the config whose ao_sft section is used (default smollm2)")
    p.add_argument("--check", action="store_true", help="train and print, but do not overwrite the shipped adapter")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides (changes what is reproduced)")
    args = p.parse_args(argv)
    command = [sys.executable, "-m", "grpo_ao.cli", "ao-sft", "--config", args.config, "--output-dir", args.output_dir,
               "model.adapter=null", *args.overrides]
    print("$", " ".join(command[1:]))
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((Path(args.output_dir) / "summary.json").read_text())
    print(json.dumps({k: summary[k] for k in ("before", "after", "steps", "wall_time_s")}, indent=2))
    if args.check:
        shipped = TARGET / "ao_sft_summary.json"
        if shipped.exists():
            print("shipped:", json.dumps(json.loads(shipped.read_text())["after"], indent=2))
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(summary["adapter"]) / "adapter_model.safetensors", TARGET / "adapter_model.safetensors")
    config = json.loads((Path(summary["adapter"]) / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "smollm2"  # grpo-ao's embedded SmolLM2-135M-Instruct, not a local path
    (TARGET / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    summary = {k: v for k, v in summary.items() if k not in ("adapter", "run_dir")}  # machine-specific paths
    summary["command"] = "python scripts/make_smollm2_ao.py " + " ".join(args.overrides)
    (TARGET / "ao_sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
