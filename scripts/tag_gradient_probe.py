"""How large is each term of a `grpo.tag_expectation` step at an adapter? (issue 15, item 6). A probe that prints
measured numbers, not a test.

Rolls out `--chunks` chunks exactly as GRPO does (the config and its overrides, the adapter given) and, for the first
chunk of each, computes the gradient of each term on its own: the tag's expected calibration loss (with its entropy
bonus), `grpo.format_anchor`'s opening and `grpo.answer_anchor`'s answers. Printed: each term's gradient norm (at
weight 1) and the share of LoRA parameters where the answer anchor's |gradient| exceeds the tag term's. Adam divides
each parameter's step by the running size of its whole gradient, so where one term is many times larger, the other
moves that parameter by a fraction of the learning rate (docs/RESULTS.md, session 13).

    python scripts/tag_gradient_probe.py --adapter <adapter> data.source=/tmp/calib.jsonl \\
        grpo.answer_anchor_source=builtin reward.target=correctness sampling.temperature=0.3 \\
        grpo.prompts_per_step=8 sampling.num_generations=2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

os.environ.setdefault("GRPO_AO_NO_PROGRESS", "1")

TAG_TERMS = ["grpo.advantage_routing=tag", "grpo.tag_expectation=true", "grpo.format_anchor=1.0",
             "grpo.answer_anchor=1.0"]


def term_gradients(config: str, adapter: str, overrides: list[str], chunks: int) -> list[dict[str, float]]:
    """Per rolled-out chunk: {"tag", "format", "answer": gradient norm of that term alone (weight 1),
    "answer_wins": share of LoRA parameters where |answer anchor grad| > |tag grad|}."""
    import torch

    from grpo_ao.config import anchor_data, load_config
    from grpo_ao.format import tag_candidate_ids
    from grpo_ao.judge import build_judge
    from grpo_ao.recipes import grpo, grpo_tag
    from grpo_ao.recipes.adapters import written_layout
    from grpo_ao.recipes.setup import load_oracle, task_sampler, trainable_parameters

    work = tempfile.mkdtemp(prefix="tag_gradient_probe_")
    cfg = load_config(config, [*TAG_TERMS, *overrides, f"model.adapter={adapter}", f"logging.output_dir={work}",
                               "logging.progress=false"])
    model, tok = load_oracle(cfg, gradient_checkpointing=False, layout=written_layout(cfg, "grpo"))
    sampler = task_sampler(cfg.data, tok)
    anchor_sampler = task_sampler(anchor_data(cfg), tok) if cfg.grpo.answer_anchor_source else None
    judge = build_judge(cfg.judge, cache_path=os.path.join(work, "judge.sqlite"))
    engine = grpo.start_engine(cfg, model, tok, cfg.run_dir)
    tag_ids, params = tag_candidate_ids(tok), trainable_parameters(model)

    def grad() -> torch.Tensor:
        return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])

    out = []
    for step in range(1, chunks + 1):
        timers = {"rollout": 0.0, "judge": 0.0, "update": 0.0}
        chunk = grpo.collect_chunks(cfg, model, tok, engine, sampler, judge, step, timers, anchor_sampler)[0]
        g = chunk.rollouts.num_generations
        n_rollouts = int(chunk.valid.sum())
        n_tokens = int(chunk.rollouts.completion_mask[chunk.valid].sum())
        grads = {}
        with grpo.train_without_dropout(model):
            for name, format_anchor in (("tag", 0.0), ("tag+format", 1.0)):
                alone = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, format_anchor=format_anchor))
                model.zero_grad(set_to_none=True)
                grpo_tag.tag_expectation_backward(alone, model, dataclasses.replace(chunk, anchors=None), tag_ids,
                                                  tok.pad_token_id, n_rollouts, n_tokens)
                grads[name] = grad()
            weights = grpo_tag.scored_weights(cfg, chunk, n_rollouts, n_tokens)  # [N]
            model.zero_grad(set_to_none=True)
            grpo_tag.answer_anchor_backward(cfg, model, chunk, weights.view(-1, g), tok.pad_token_id)
            grads["answer"] = grad() / cfg.grpo.answer_anchor  # at weight 1
        model.zero_grad(set_to_none=True)
        tag = grads["tag"]
        out.append({"tag": float(tag.norm()), "format": float((grads["tag+format"] - tag).norm()),
                    "answer": float(grads["answer"].norm()),
                    "answer_wins": float((grads["answer"].abs() > tag.abs()).float().mean())})
    engine.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value config overrides (the GRPO run's)")
    p.add_argument("--config", default="smollm2")
    p.add_argument("--adapter", required=True, help="the oracle adapter to probe")
    p.add_argument("--chunks", type=int, default=3, help="chunks to roll out and measure")
    args = p.parse_args(argv)
    for i, row in enumerate(term_gradients(args.config, args.adapter, args.overrides, args.chunks), start=1):
        print(f"chunk {i}: |grad| tag {row['tag']:.2e}, format anchor {row['format']:.2e}, answer anchor "
              f"{row['answer']:.2e}; answer anchor larger on {row['answer_wins']:.0%} of the LoRA parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
