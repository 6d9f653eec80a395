"""Write ``src/zhilu/eval/data/{ceval,cmmlu,fineval}.json`` (subject metadata) from the official mapping files.

Subject names, Chinese names and categories are factual metadata of each benchmark; this script
copies them from the mapping/category files that sit beside the data in ``../shared/data``:

- C-Eval: ``ceval/subject_mapping.json`` (hkust-nlp/ceval, verbatim: ``{subject: [en, zh, category]}``)
  and the C-Eval Hard list in ``ceval/categories.json`` (hkust-nlp/ceval README).
- CMMLU: ``cmmlu/categories.json`` (haonan-li/CMMLU ``src/categories.py``: ``name_en2zh``,
  ``subcategories``, ``categories``); a subject's category is computed as ``src/mp_utils.py`` does.
- FinEval: ``fineval/subject_mapping.json`` (SUFE-AIFLM-Lab/FinEval, ``{subject: [en, zh, category]}``).

Usage: ``python scripts/make_eval_subjects.py [--shared ../shared/data] [--out src/zhilu/eval/data]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def ceval(shared: Path) -> dict:
    mapping = _load(shared / "ceval" / "subject_mapping.json")
    hard = set(_load(shared / "ceval" / "categories.json")["hard"])
    subjects = [{"name": s, "name_en": en, "name_zh": zh, "category": cat, "hard": s in hard}
                for s, (en, zh, cat) in mapping.items()]
    return {
        "benchmark": "ceval",
        "source": "hkust-nlp/ceval subject_mapping.json (subject -> [English name, Chinese name, category]); "
                  "C-Eval Hard = the 8 subjects listed in the hkust-nlp/ceval README",
        "categories": ["STEM", "Social Science", "Humanities", "Other"],
        "subjects": subjects,
    }


def cmmlu(shared: Path) -> dict:
    cats = _load(shared / "cmmlu" / "categories.json")
    main = ["STEM", "Social Science", "Humanities", "Other"]
    subjects = []
    for s, zh in cats["name_en2zh"].items():
        subcats = cats["subcategories"][s]
        # src/mp_utils.py: a subject belongs to every category that lists one of its subcategories
        member = [c for c, subs in cats["categories"].items() if any(x in subs for x in subcats)]
        category = [c for c in member if c in main]
        assert len(category) == 1, (s, member)
        subjects.append({"name": s, "name_en": s.replace("_", " ").title(), "name_zh": zh,
                         "category": category[0], "china_specific": "China specific" in member})
    return {
        "benchmark": "cmmlu",
        "source": "haonan-li/CMMLU src/categories.py (name_en2zh, subcategories, categories); "
                  "categories assigned as in src/mp_utils.py (category2subject)",
        "categories": main,
        "subjects": subjects,
    }


def fineval(shared: Path) -> dict:
    mapping = _load(shared / "fineval" / "subject_mapping.json")
    subjects = [{"name": s, "name_en": en.replace("_", " ").title(), "name_zh": zh, "category": cat}
                for s, (en, zh, cat) in mapping.items()]
    return {
        "benchmark": "fineval",
        "source": "SUFE-AIFLM-Lab/FinEval code/opensource_eval/1academic_eval/code/subject_mapping.json "
                  "(subject -> [subject, Chinese name, category])",
        "categories": ["Accounting", "Certificate", "Economy", "Finance"],
        "subjects": subjects,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "zhilu" / "eval" / "data")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for make in (ceval, cmmlu, fineval):
        meta = make(args.shared)
        path = args.out / f"{meta['benchmark']}.json"
        path.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"{path}: {len(meta['subjects'])} subjects")


if __name__ == "__main__":
    main()
