"""Accuracy per subject, group averages as the official leaderboards compute them, the Markdown table.

C-Eval and CMMLU average over subjects: a category is the unweighted mean of its subjects'
accuracies and the overall average the mean over all subjects (CMMLU ``src/mp_utils.py``
``get_results``; C-Eval's published averages equal the subject mean, e.g. GPT-4's 68.7 =
(20 x 67.1 + 10 x 77.6 + 11 x 64.5 + 11 x 67.8) / 52). FinEval's script pools questions
instead (``eval.py``: correct / num per group), selected with ``weight_by_questions``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SubjectScore:
    n: int = 0  # questions evaluated
    scored: int = 0  # questions with a known answer
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / self.scored if self.scored else None


def group_scores(per_subject: dict[str, SubjectScore], groups: dict[str, list[str]],
                 weight_by_questions: bool = False) -> dict[str, float | None]:
    """Percent accuracy of each group over the subjects that were scored (``None``: none were)."""
    out: dict[str, float | None] = {}
    for name, members in groups.items():
        scores = [per_subject[s] for s in members if s in per_subject and per_subject[s].scored]
        if not scores:
            out[name] = None
        elif weight_by_questions:
            out[name] = 100.0 * sum(s.correct for s in scores) / sum(s.scored for s in scores)
        else:
            out[name] = sum(s.accuracy for s in scores) / len(scores)  # type: ignore[misc]
    return out


def format_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(rows: list[tuple[str, dict[str, float | None]]], columns: dict[str, str]) -> str:
    """A Markdown table: ``| Model | <header> ... |``, one row per model, values as percentages."""
    headers = list(columns)
    lines = ["| Model | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for model, values in rows:
        lines.append(f"| {model} | " + " | ".join(format_pct(values.get(columns[h])) for h in headers) + " |")
    return "\n".join(lines) + "\n"
