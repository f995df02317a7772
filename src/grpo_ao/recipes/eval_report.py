"""The eval's tables: eval.md and the final table of `grpo-ao run`, formatted from eval.json's numbers.

Every cell is a number of eval.json rounded to 3 decimals ("–" for None); the control columns come from
`controls.shuffled.summary` and `controls.counterfactual.summary` (`with_controls`). Nothing here is
computed from anything but eval.json, so a table can always be checked against the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TABLE_COLUMNS = [
    ("n", "n"), ("parse rate", "parse_rate"), ("accuracy", "accuracy"), ("shuffled acc", "shuffled_accuracy"),
    ("Δ acc", "accuracy_delta"), ("counterf. acc", "counterfactual_accuracy"),
    ("Δ acc (cf)", "accuracy_delta_counterfactual"), ("AUROC", "auroc_correct"),
    ("AUROC in family", "auroc_correct_within_family"), ("ECE (target)", "ece_target"),
    ("ECE (correct)", "ece_correct"), ("Brier (correct)", "brier_correct"), ("ECE (info)", "ece_info"),
    ("conf if right", "mean_confidence_correct"), ("conf if wrong", "mean_confidence_incorrect"),
]
"""The main table; `shuffled_accuracy`, `counterfactual_accuracy` and the Δs come from the controls."""
RUN_COLUMNS = [("parse rate", "parse_rate"), ("accuracy", "accuracy"), ("shuffled acc", "shuffled_accuracy"),
               ("counterf. acc", "counterfactual_accuracy"), ("AUROC", "auroc_correct"),
               ("AUROC in family", "auroc_correct_within_family"), ("ECE (target)", "ece_target")]
"""The final table of `grpo-ao run`, one row per stage."""
MORE_COLUMNS = [
    ("abstain rate", "abstain_rate"), ("mean info", "mean_informativeness"), ("mean conf", "mean_confidence"),
    ("MCE (correct)", "mce_correct"), ("Brier (info)", "brier_info"), ("reward", "mean_reward"),
    ("counterf. n", "counterfactual_n"),
]
FAMILY_COLUMNS = [("n", "n"), ("parse rate", "parse_rate"), ("accuracy", "accuracy"),
                  ("shuffled acc", "shuffled_accuracy"), ("Δ acc", "accuracy_delta"),
                  ("counterf. acc", "counterfactual_accuracy"), ("Δ acc (cf)", "accuracy_delta_counterfactual"),
                  ("ECE (target)", "ece_target"), ("ECE (correct)", "ece_correct"), ("AUROC", "auroc_correct")]


def delta(a: float | None, b: float | None) -> float | None:
    """a − b, None when either is None."""
    return None if a is None or b is None else a - b


def with_controls(summary: dict, shuffled: dict, counterfactual: dict | None) -> dict:
    """`summary` plus the controls' columns: `shuffled_accuracy`, `accuracy_delta` (= accuracy − shuffled),
    `counterfactual_accuracy`, `accuracy_delta_counterfactual` (= accuracy − counterfactual) and
    `counterfactual_n` (items with a counterfactual donor)."""
    cf = counterfactual or {}
    return {**summary, "shuffled_accuracy": shuffled.get("accuracy"),
            "accuracy_delta": delta(summary.get("accuracy"), shuffled.get("accuracy")),
            "counterfactual_accuracy": cf.get("accuracy"),
            "accuracy_delta_counterfactual": delta(summary.get("accuracy"), cf.get("accuracy")),
            "counterfactual_n": cf.get("n", 0)}


def result_row(result: dict) -> dict:
    """One adapter's eval.json entry as a table row (`with_controls`)."""
    controls = result["controls"]
    return with_controls(result["summary"], controls["shuffled"]["summary"],
                         controls.get("counterfactual", {}).get("summary"))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _table(keys: Sequence[str], columns: Sequence[tuple[str, str]], rows: Sequence[tuple[list[str], dict]]) -> str:
    lines = ["| " + " | ".join([*keys, *(c for c, _ in columns)]) + " |", "|---" * (len(keys) + len(columns)) + "|"]
    return "\n".join(lines + ["| " + " | ".join([*names, *(_fmt(row.get(k)) for _, k in columns)]) + " |"
                              for names, row in rows])


def markdown_table(results: dict[str, dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """One row per adapter, formatted from the eval.json numbers (3 decimals); Δ acc = accuracy − control acc."""
    return _table(["adapter"], columns, [([label], result_row(r)) for label, r in results.items()])


def family_table(results: dict[str, dict]) -> str:
    """Adapter × task family: accuracy, both controls' accuracies and the differences, calibration."""
    rows = []
    for label, r in results.items():
        shuffled = r["controls"]["shuffled"]["summary"]["per_family"]
        cf = r["controls"].get("counterfactual", {}).get("summary", {}).get("per_family", {})
        rows += [([label, family], with_controls(fs, shuffled.get(family, {}), cf.get(family)))
                 for family, fs in sorted(r["summary"]["per_family"].items())]
    return _table(["adapter", "family"], FAMILY_COLUMNS, rows)


def eval_markdown(report: dict) -> str:
    """eval.md: what the columns mean, the main table, more numbers and the per-family table."""
    results = report["adapters"]
    return (f"# Calibration evaluation ({report['num_items']} items, judge {report['judge']})\n\n"
            "conf = X/10; accuracy, Brier/ECE/MCE/AUROC over parsed answers only; parse failures count only in "
            "the parse rate. An answer that takes no position is not correct. shuffled acc: the same questions "
            "asked about another example's activations (a different reference answer; same layer and K where "
            "possible). counterf. acc: the same questions asked about a context whose answer to THAT question "
            "differs, at the item's own layer and K (only items with such a context, `counterf. n` of them, "
            "known from the data's labels): a reader scores ~0 there, a guesser its prior. "
            "Δ acc = accuracy − the control's accuracy, what was read from the activations. AUROC in family: "
            "the mean per-family AUROC over families with right and wrong answers (knowing which item it got "
            "right, not only which family it is good at). ECE (target): against the reward's target "
            f"({report.get('reward_target')}).\n\n{markdown_table(results)}\n\n"
            f"## More numbers\n\n{markdown_table(results, MORE_COLUMNS)}\n\n"
            f"## Per task family\n\n{family_table(results)}\n")
