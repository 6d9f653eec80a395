"""How uncertain is the model about a question? Three estimators and the keep/drop rule of
self-evolution.

- ``LetterEntropy`` (multiple choice): entropy of the model's next-token distribution over the
  answer letters, renormalised over the letters, divided by ``ln K`` so that 0 = certain and
  1 = uniform (the likelihood scoring of MMLU-style evaluation, Hendrycks et al. 2021,
  https://arxiv.org/abs/2009.03300). ``zhilu.eval`` had no scorer to reuse when this was written,
  so the small one here does it (``choice_logprobs`` of the backend).
- ``MeanTokenEntropy`` (open questions): mean entropy (nats) of the next-token distributions
  along the greedy answer (Malinin & Gales 2021, https://arxiv.org/abs/2002.07650).
- ``SampleDisagreement`` (open questions, works with any generator): sample ``n`` answers and
  measure ``1 - (largest cluster of similar answers) / n`` (the idea of semantic entropy /
  self-consistency: Kuhn et al. 2023, https://arxiv.org/abs/2302.09664).

Self-evolution keeps a question when knowledge helped: the uncertainty fell by a threshold, or
the predicted answer letter changed (``KeepRule``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from zhilu.data.clean import char_ngrams, jaccard
from zhilu.errors import ConfigError
from zhilu.synth.questions import Question
from zhilu.synth.retrieval import Passage


@dataclass
class Estimate:
    """A prediction and its uncertainty; ``label`` is the answer letter (multiple choice only)."""

    prediction: str
    uncertainty: float
    label: str | None = None
    dist: list[float] | None = None


def context_block(passages: Sequence[Passage] | None) -> str:
    if not passages:
        return ""
    return "参考资料：\n" + "\n".join(f"[{i + 1}] {p.as_context()}" for i, p in enumerate(passages)) + "\n\n"


def mcq_messages(q: Question, passages: Sequence[Passage] | None = None) -> list[dict]:
    subject = f"关于{q.subject}的" if q.subject else ""
    text = (f"以下是{subject}单项选择题，请直接给出正确答案的选项字母。\n\n{context_block(passages)}"
            f"题目：{q.display()}")
    return [{"role": "user", "content": text}]


def open_messages(q: Question, passages: Sequence[Passage] | None = None) -> list[dict]:
    if passages:
        return [{"role": "user", "content": f"{context_block(passages)}请根据以上资料回答问题：{q.text}"}]
    return [{"role": "user", "content": q.text}]


def letter_distribution(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the letters' log-probabilities (``-inf`` = 0; all ``-inf``: uniform)."""
    finite = [x for x in logprobs if x > -math.inf]
    if not finite:
        return [1.0 / len(logprobs)] * len(logprobs)
    m = max(finite)
    ex = [math.exp(x - m) if x > -math.inf else 0.0 for x in logprobs]
    s = sum(ex)
    return [e / s for e in ex]


def entropy(probs: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


class Estimator(Protocol):
    def estimate(self, backend: Any, questions: Sequence[Question],
                 contexts: Sequence[Sequence[Passage] | None]) -> list[Estimate]: ...


@dataclass
class LetterEntropy:
    """Normalised entropy of the answer-letter distribution (multiple choice)."""

    assistant_prefix: str = "答案："
    normalize: bool = True

    def estimate(self, backend, questions, contexts):
        out: list[Estimate | None] = [None] * len(questions)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(tuple(q.choices), []).append(i)
        for letters, idx in groups.items():
            lps = backend.choice_logprobs([mcq_messages(questions[i], contexts[i]) for i in idx], list(letters),
                                          self.assistant_prefix)
            for i, lp in zip(idx, lps):
                p = letter_distribution(lp)
                h = entropy(p) / (math.log(len(p)) if self.normalize else 1.0)
                best = max(range(len(p)), key=lambda j: (p[j], -j))
                out[i] = Estimate(letters[best], h, letters[best], p)
        return out


@dataclass
class MeanTokenEntropy:
    """Mean next-token entropy (nats) along the greedy answer (open questions)."""

    max_new_tokens: int = 64

    def estimate(self, backend, questions, contexts):
        res = backend.generate_with_entropy([open_messages(q, c) for q, c in zip(questions, contexts)],
                                            self.max_new_tokens)
        return [Estimate(text, h) for text, h in res]


@dataclass
class SampleDisagreement:
    """``1 - largest cluster / n`` over ``n_samples`` sampled answers; answers whose character-bigram
    Jaccard similarity to a cluster's first answer is at least ``similarity`` join that cluster.
    The generator must sample (temperature > 0)."""

    n_samples: int = 5
    max_new_tokens: int = 64
    similarity: float = 0.5

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise ConfigError(f"SampleDisagreement.n_samples={self.n_samples}: expected >= 2")

    def estimate(self, backend, questions, contexts):
        prompts = [open_messages(q, c) for q, c in zip(questions, contexts) for _ in range(self.n_samples)]
        texts = [""] * len(prompts)
        for i, t in backend.generate(prompts, max_new_tokens=self.max_new_tokens):
            texts[i] = t
        out = []
        for k in range(len(questions)):
            out.append(self.cluster(texts[k * self.n_samples: (k + 1) * self.n_samples]))
        return out

    def cluster(self, answers: Sequence[str]) -> Estimate:
        clusters: list[list[int]] = []
        grams = [char_ngrams(a, 2) for a in answers]
        for i in range(len(answers)):
            for c in clusters:
                if jaccard(grams[i], grams[c[0]]) >= self.similarity:
                    c.append(i)
                    break
            else:
                clusters.append([i])
        biggest = max(clusters, key=len)
        return Estimate(answers[biggest[0]], 1.0 - len(biggest) / len(answers))


@dataclass
class Uncertainty:
    """Routes multiple-choice questions to ``mcq`` and open ones to ``open``, keeping the order."""

    mcq: Any = None
    open: Any = None

    def estimate(self, backend, questions: Sequence[Question],
                 contexts: Sequence[Sequence[Passage] | None]) -> list[Estimate]:
        out: list[Estimate | None] = [None] * len(questions)
        for kind, est in (("mcq", self.mcq), ("open", self.open)):
            idx = [i for i, q in enumerate(questions) if q.is_mcq == (kind == "mcq")]
            if not idx:
                continue
            if est is None:
                raise ConfigError(f"uncertainty.{kind} is null but the question set has {kind} questions")
            for i, e in zip(idx, est.estimate(backend, [questions[i] for i in idx], [contexts[i] for i in idx])):
                out[i] = e
        return out


@dataclass
class KeepRule:
    """Keep a case when, with the retrieved knowledge, the uncertainty fell by at least
    ``min_drop`` (absolute) or ``min_relative_drop`` (share of the uncertainty before), or the
    predicted letter flipped (``keep_flips``). ``require_correct``: with a gold letter known, the
    prediction with knowledge must be right. ``None`` turns a threshold off."""

    min_drop: float | None = None
    min_relative_drop: float | None = 0.2
    keep_flips: bool = True
    require_correct: bool = False

    def __post_init__(self) -> None:
        if self.min_drop is None and self.min_relative_drop is None and not self.keep_flips:
            raise ConfigError("keep_rule: every criterion is off (set min_drop, min_relative_drop or keep_flips)")

    def decide(self, before: Estimate, after: Estimate, gold: str | None = None) -> tuple[bool, str]:
        drop = before.uncertainty - after.uncertainty
        eps = 1e-9  # 0.9 - 0.8 is a drop of 0.1
        fell = (self.min_drop is not None and drop >= self.min_drop - eps) or (
            self.min_relative_drop is not None and before.uncertainty > 0
            and drop / before.uncertainty >= self.min_relative_drop - eps)
        flipped = self.keep_flips and before.label is not None and after.label is not None \
            and before.label != after.label
        if not (fell or flipped):
            return False, "no drop, no flip"
        if self.require_correct and gold is not None and after.label is not None and after.label != gold:
            return False, "wrong with knowledge"
        return True, " + ".join(w for w, ok in (("uncertainty fell", fell), ("prediction flipped", flipped)) if ok)
