"""What the terminal shows about a task stream: a line per finished task and a closing table at the end of fit.

Both are built from the retention summary (``RetentionEvaluator.summary``, the content of retention.json), so
the screen, the file and the dashboards never disagree.
"""

from __future__ import annotations

from typing import Any, Mapping


def _baseline_text(task: Mapping[str, Any]) -> str:
    best = task.get("best_impression_accuracy")
    return "" if best is None else f"{best:.4f} (slot {task['best_impression_slot']})"


def task_line(summary: Mapping[str, Any]) -> str:
    """``[impress] task <id> (k/T, kind) done: ...`` for the last task of ``summary``: its accuracy, the best single
    impression's accuracy on it (when impressions were stored before it), the average over the tasks seen,
    BWT and forgetting."""
    task = summary["tasks"][-1]
    t, total = task["task"], len(summary["accuracy_matrix"][0])
    accuracy = summary["accuracy_matrix"][-1][t]
    baseline = _baseline_text(task)
    versus = f" vs best single impression {baseline}" if baseline else ""
    return (f"[impress] task {t} ({t + 1}/{total}, {task['kind']}) done: acc {accuracy:.4f}{versus}; "
            f"avg over seen {summary['average_accuracy']:.4f}, BWT {summary['bwt']:+.4f}, "
            f"forgetting {summary['forgetting']:.4f}")


def closing_table(summary: Mapping[str, Any], wall_seconds: float) -> str:
    """A fixed-width table: per task its kind, final accuracy, the best single impression's accuracy and bytes
    stored; then average accuracy, BWT, forgetting, forward transfer, total bytes and times."""
    matrix, tasks = summary["accuracy_matrix"], summary["tasks"]
    final = matrix[-1]
    header = f"{'task':>4}  {'kind':<11}  {'accuracy':>8}  {'best single impression':<22}  {'bytes':>9}"
    lines = ["", f"impress-lightning: {len(tasks)} of {len(final)} task(s) learned ({summary['split']} split)",
             header, "-" * len(header)]
    for task in tasks:
        t = task["task"]
        lines.append(f"{t:>4}  {task['kind']:<11}  {final[t]:>8.4f}  {_baseline_text(task):<22}  "
                     f"{task['stored_bytes']:>9,}")
    lines.append("-" * len(header))
    fwt = summary.get("fwt")
    lines += [f"average accuracy {summary['average_accuracy']:.4f}   BWT {summary['bwt']:+.4f}   "
              f"forgetting {summary['forgetting']:.4f}   FWT {'n/a' if fwt is None else f'{fwt:+.4f}'}",
              f"total stored {summary['total_stored_bytes']:,} B   task time {sum(t['seconds'] for t in tasks):.1f} s"
              f"   wall time {wall_seconds:.1f} s"]
    return "\n".join(lines)
