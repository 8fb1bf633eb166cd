"""Short result tables for the command line and task logs."""

from __future__ import annotations

from collections.abc import Mapping

_TRAIN_ROWS = (
    ("test_auc", "test AUC", "{:.4f}"),
    ("test_logloss", "test log loss", "{:.4f}"),
    ("baseline_logloss", "base-rate log loss", "{:.4f}"),
    ("test_accuracy", "test accuracy", "{:.4f}"),
    ("test_rmse", "test RMSE", "{:.4f}"),
    ("test_mae", "test MAE", "{:.4f}"),
    ("baseline_rmse", "mean-rating RMSE", "{:.4f}"),
    ("test_rows", "test rows", "{:,}"),
    ("train_loss", "train loss (progressive)", "{:.4f}"),
    ("best_test_loss", "best live held-out loss", "{:.4f}"),
    ("examples", "examples trained", "{:,}"),
    ("examples_per_second", "examples / second", "{:,.0f}"),
    ("workers", "workers", "{}"),
    ("invocations", "invocations", "{}"),
    ("worker_seconds", "worker-seconds", "{:.1f}"),
    ("estimated_cost_usd", "estimated AWS cost ($)", "{:.6f}"),
    ("stopped_by", "stopped by", "{}"),
    ("model_uri", "model", "{}"),
)
_PREPROCESS_ROWS = (
    ("rows_read", "rows read", "{:,}"),
    ("rows_written", "rows written", "{:,}"),
    ("train_rows", "train rows", "{:,}"),
    ("test_rows", "test rows", "{:,}"),
    ("rows_rejected", "rows rejected", "{:,}"),
    ("rejected_by_reason", "rejected by reason", "{}"),
    ("shards", "shards", "{}"),
    ("feature_dim", "features", "{:,}"),
    ("seconds", "seconds", "{:.1f}"),
    ("manifest_uri", "manifest", "{}"),
)
_PREDICT_ROWS = (
    ("rows_read", "rows read", "{:,}"),
    ("rows_scored", "rows scored", "{:,}"),
    ("rows_rejected", "rows rejected", "{:,}"),
    ("rejected_by_reason", "rejected by reason", "{}"),
    ("logloss", "log loss", "{:.4f}"),
    ("auc", "AUC", "{:.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("rmse", "RMSE", "{:.4f}"),
    ("mae", "MAE", "{:.4f}"),
    ("rows_unknown_user", "rows of unknown users", "{:,}"),
    ("rows_unknown_item", "rows of unknown items", "{:,}"),
    ("seconds", "seconds", "{:.1f}"),
    ("output", "predictions", "{}"),
)


def format_table(summary: Mapping, rows: tuple = ()) -> str:
    """Two aligned columns of the figures a person looks at first."""
    if not rows:
        rows = _TRAIN_ROWS if "model_uri" in summary else _PREDICT_ROWS if "rows_scored" in summary else _PREPROCESS_ROWS
    cells = [(label, fmt.format(summary[key])) for key, label, fmt in rows if summary.get(key) is not None]
    width = max(len(label) for label, _ in cells) if cells else 0
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in cells)


def progress_line(point: dict) -> str:
    """One point of a training curve, as the task log and the command line show it."""
    loss = point["train_loss"]
    held_out = f"  held-out loss={point['test_loss']:.4f}" if "test_loss" in point else ""
    return (f"t={point['t']:.1f}s  updates={point['updates']:,}  "
            f"loss={'n/a' if loss is None else f'{loss:.4f}'}{held_out}")


def format_search(results: Mapping) -> str:
    """A search's configurations, one a line, the best marked."""
    best = (results.get("best") or {}).get("id")
    lines = [f"  {'':1} {'configuration':<14}{'status':<15}{results.get('metric', 'metric'):>13}{'worker-s':>10}  params"]
    for c in results["configs"]:
        metric = "-" if c["metric"] is None else f"{c['metric']:.4f}"
        params = ", ".join(f"{k}={v}" for k, v in c["params"].items())
        lines.append(f"  {'*' if c['id'] == best else ' '} {c['id']:<14}{c['status']:<15}{metric:>13}"
                     f"{c['worker_seconds']:>10.1f}  {params}")
    lines.append(f"  worker-seconds in all: {results['worker_seconds_total']:.1f}")
    if results.get("output"):
        lines.append(f"  report with plots: {results['output'].rstrip('/')}/report.html")
    return "\n".join(lines)
