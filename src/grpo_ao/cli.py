"""`grpo-ao` command line: parses arguments and dispatches to a recipe. Nothing else lives here.

A user mistake (`GrpoAoError`) prints one paragraph and exits 2, without a traceback.
Heavy modules (torch, transformers) are imported only inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _training_args(p: argparse.ArgumentParser, default_config: str | None = None, max_steps: bool = True) -> None:
    p.add_argument("--config", default=default_config, required=default_config is None,
                   help="shipped config name (tiny, smollm2, qwen3-8b) or a YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.lr=1e-5 sampling.temperature=0.9")
    p.add_argument("--output-dir", help="run directory (default runs/<name>)")
    if max_steps:
        p.add_argument("--max-steps", type=int, help="GRPO optimizer steps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpo-ao", description="Train activation oracles with calibrated "
                                     "confidence using Dr. GRPO.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the main job: (AO pretraining →) format SFT → GRPO → evaluation (default: embedded SmolLM2 demo)")
    _training_args(p, default_config="")
    p = sub.add_parser("grpo", help="Dr. GRPO training")
    _training_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p = sub.add_parser("ao-sft", help="AO pretraining: teach a base model to answer questions from activations")
    _training_args(p, max_steps=False)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p = sub.add_parser("sft", help="format SFT: teach the [epistemic status: X] format")
    _training_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p = sub.add_parser("observe", help="roll out without training and print a readable report")
    _training_args(p, max_steps=False)
    p.add_argument("--num-examples", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--adapter", help="LoRA adapter to observe (default: the config's)")
    p.add_argument("--no-judge", action="store_true", help="skip the judge (no scores or rewards)")
    p = sub.add_parser("eval", help="calibration evaluation: Brier, ECE, AUROC, reliability diagrams")
    _training_args(p, max_steps=False)
    p.add_argument("--adapter", action="append", default=[], metavar="PATH",
                   help="adapter to evaluate (repeatable; 'base' = the config's starting adapter, "
                        "'none' = the bare base model)")
    p = sub.add_parser("bench", help="whole GRPO steps: the prototype's step vs ours with each rollout engine")
    _training_args(p, max_steps=False)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    p.add_argument("--engines", default="hf", help="our step with these rollout engines, comma-separated: hf, vllm "
                   "(vllm needs scripts/install_vllm.sh)")
    p.add_argument("--compare-update", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the first engine's step with the other update path (prefix-shared vs one-forward)")
    p = sub.add_parser("push", help="push an adapter directory to a Hugging Face Hub repo (retry of a failed push)")
    p.add_argument("adapter", help="adapter directory (holds adapter_config.json and grpo_ao_oracle.json)")
    p.add_argument("repo", help="hub repo id, org/name")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p = sub.add_parser("doctor", help="is this machine ready? versions, GPUs, memory, disk, keys, endpoints")
    p.add_argument("--config", help="also check what this config needs (shipped name or YAML path)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--offline", action="store_true", help="skip the network checks (hub, judge endpoint)")

    p = sub.add_parser("config", help="show or validate configs")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("show", help="print a resolved config as YAML")
    c.add_argument("name")
    c.add_argument("overrides", nargs="*")
    c = csub.add_parser("validate", help="load and validate a config file (offline)")
    c.add_argument("name")
    c.add_argument("overrides", nargs="*")
    csub.add_parser("list", help="list the shipped configs")
    csub.add_parser("docs", help="print the reference of every config field (Markdown)")
    return parser


def _load(args: argparse.Namespace) -> Any:
    from grpo_ao.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"logging.output_dir={args.output_dir}")
    if getattr(args, "max_steps", None) is not None:
        overrides.append(f"grpo.max_steps={args.max_steps}")
    return load_config(args.config, overrides)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        import yaml

        from grpo_ao.config import load_config, shipped_configs, to_dict

        if args.config_command == "list":
            print("\n".join(shipped_configs()))
        elif args.config_command == "docs":
            from grpo_ao.config import config_reference

            print(config_reference(), end="")
        elif args.config_command == "show":
            print(yaml.safe_dump(to_dict(load_config(args.name, args.overrides)), sort_keys=False), end="")
        else:
            cfg = load_config(args.name, args.overrides)
            print(f"{args.name}: valid (model {cfg.model.source}, judge {cfg.judge.kind}, "
                  f"{cfg.grpo.max_steps} GRPO steps, run dir {cfg.run_dir})")
        return 0
    if args.command == "run":
        from grpo_ao.recipes import pipeline

        if not args.config:
            args.config = pipeline.default_config()
        pipeline.run(_load(args))
    elif args.command in ("grpo", "ao-sft", "sft"):  # a training stage; its adapter is pushed last
        from grpo_ao.recipes import adapters, ao_sft, grpo, sft

        cfg, stage = _load(args), args.command.replace("-", "_")
        summary = {"grpo": grpo, "ao_sft": ao_sft, "sft": sft}[stage].run(cfg, resume=args.resume)
        if stage == "grpo":
            from grpo_ao.distributed import print0

            print0(f"GRPO done: reward first 20% {summary['reward_first_20pct']}, last 20% "
                   f"{summary['reward_last_20pct']}; adapter {summary['adapter']}")
        adapters.push_adapters(cfg, {stage: summary["adapter"]})
    elif args.command == "push":
        from grpo_ao.checkpoint import push_to_hub

        print(f"Pushed {args.adapter} to {push_to_hub(args.adapter, args.repo, private=not args.public)}")
    elif args.command == "observe":
        from grpo_ao.recipes import observe

        observe.run(_load(args), num_examples=args.num_examples, num_generations=args.num_generations,
                    adapter=args.adapter, use_judge=not args.no_judge)
    elif args.command == "eval":
        from grpo_ao.recipes import evaluate

        evaluate.run(_load(args), adapters=args.adapter or None)
    elif args.command == "bench":
        from grpo_ao.recipes import bench

        bench.run(_load(args), repeats=args.repeats, engines=tuple(e for e in args.engines.split(",") if e),
                  compare_update=args.compare_update)
    elif args.command == "doctor":
        from grpo_ao.doctor import exit_code, render
        from grpo_ao.recipes import doctor

        cfg = _load(args) if args.config else None
        findings = doctor.run(cfg, offline=args.offline)
        print(render(findings, doctor.title(cfg, args.offline)))
        return exit_code(findings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    from grpo_ao.errors import GrpoAoError

    # transformers 5.x deprecation notices about its own internals say nothing a user can act on
    warnings.filterwarnings("ignore", category=FutureWarning)

    try:
        from grpo_ao.envfile import load_env_file

        load_env_file()  # ./.env for every command (WANDB_API_KEY, HF_TOKEN, the judge's key); exported ones win
        return dispatch(args)
    except GrpoAoError as e:
        print(f"grpo-ao: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grpo-ao: interrupted; the latest complete checkpoint is kept (use --resume).", file=sys.stderr)
        return 130
    finally:
        if "grpo_ao.distributed" in sys.modules:  # only commands that trained or evaluated started one
            from grpo_ao.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
