"""Aggregation on hand-made per-subject accuracies, and the model card's table layouts."""

from __future__ import annotations

import pytest

from zhilu.eval.metrics import SubjectScore, group_scores, render_table
from zhilu.eval.subjects import groups, load_subjects

CEVAL_COLUMNS = {"STEM": "STEM", "Social Science": "Social Science", "Humanities": "Humanities", "Other": "Other",
                 "Avg": "avg", "Avg(Hard)": "hard"}
CMMLU_COLUMNS = {"STEM": "STEM", "Social Science": "Social Science", "Humanities": "Humanities", "Other": "Other",
                 "China-specific": "china_specific", "Average": "avg"}


def _scores(spec: dict[str, tuple[int, int]]) -> dict[str, SubjectScore]:
    return {k: SubjectScore(n=n, scored=n, correct=c) for k, (c, n) in spec.items()}


def test_shipped_metadata_has_the_official_subject_counts():
    ceval, cmmlu, fineval = (load_subjects(b) for b in ("ceval", "cmmlu", "fineval"))
    g = groups(list(ceval.subjects), ceval.categories)
    assert {k: len(v) for k, v in g.items()} == {"STEM": 20, "Social Science": 10, "Humanities": 11, "Other": 11,
                                                 "avg": 52, "hard": 8, "china_specific": 0}
    assert set(g["hard"]) == {"advanced_mathematics", "discrete_mathematics", "probability_and_statistics",
                              "college_chemistry", "college_physics", "high_school_mathematics",
                              "high_school_chemistry", "high_school_physics"}
    g = groups(list(cmmlu.subjects), cmmlu.categories)
    assert {k: len(v) for k, v in g.items()} == {"STEM": 17, "Social Science": 22, "Humanities": 13, "Other": 15,
                                                 "avg": 67, "hard": 0, "china_specific": 15}
    assert len(fineval.subjects) == 34 and fineval["tax_law"].category == "Accounting"
    assert ceval["law"].name_zh == "法学" and cmmlu["ancient_chinese"].china_specific


def test_ceval_groups_average_subjects_and_hard_covers_the_hard_ones():
    meta = load_subjects("ceval")
    subjects = [meta[s] for s in ("computer_network", "college_physics", "advanced_mathematics", "marxism",
                                  "law", "accountant")]
    per = _scores({"computer_network": (3, 4), "college_physics": (1, 4), "advanced_mathematics": (5, 10),
                   "marxism": (2, 2), "law": (0, 3), "accountant": (10, 20)})
    # accuracies 75, 25, 50 | 100 | 0 | 50
    got = group_scores(per, groups(subjects, meta.categories))
    assert got == pytest.approx({"STEM": 50.0, "Social Science": 100.0, "Humanities": 0.0, "Other": 50.0,
                                 "avg": 50.0, "hard": 37.5, "china_specific": None})
    # FinEval pools questions: STEM 9/18, avg 21/43
    pooled = group_scores(per, groups(subjects, meta.categories), weight_by_questions=True)
    assert pooled["STEM"] == pytest.approx(50.0) and pooled["avg"] == pytest.approx(100 * 21 / 43)
    assert pooled["hard"] == pytest.approx(100 * 6 / 14)


def test_cmmlu_china_specific_and_unscored_subjects():
    meta = load_subjects("cmmlu")
    subjects = [meta[s] for s in ("ancient_chinese", "chinese_history", "anatomy", "arts")]
    per = _scores({"ancient_chinese": (1, 4), "chinese_history": (3, 4), "anatomy": (2, 5), "arts": (0, 1)})
    per["arts"] = SubjectScore(n=3, scored=0, correct=0)  # no answers: left out, not counted as 0
    got = group_scores(per, groups(subjects, meta.categories))
    assert meta["chinese_history"].category == "Humanities"
    assert got == pytest.approx({"STEM": 40.0, "Social Science": 25.0, "Humanities": 75.0, "Other": None,
                                 "avg": (25 + 75 + 40) / 3, "hard": None, "china_specific": 50.0})


def test_tables_have_the_model_card_columns():
    values = {"STEM": 50.0, "Social Science": 100.0, "Humanities": 0.0, "Other": 12.3456, "avg": 40.5,
              "hard": None, "china_specific": 33.333333}
    assert render_table([("zhilu-tiny", values)], CEVAL_COLUMNS) == (
        "| Model | STEM | Social Science | Humanities | Other | Avg | Avg(Hard) |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| zhilu-tiny | 50.00 | 100.00 | 0.00 | 12.35 | 40.50 | - |\n"
    )
    assert render_table([("a", values), ("b", {})], CMMLU_COLUMNS) == (
        "| Model | STEM | Social Science | Humanities | Other | China-specific | Average |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| a | 50.00 | 100.00 | 0.00 | 12.35 | 33.33 | 40.50 |\n"
        "| b | - | - | - | - | - | - |\n"
    )
