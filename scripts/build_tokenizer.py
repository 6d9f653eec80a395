"""Build the small byte-level BPE tokenizer that the embedded default model uses.

It is trained on the project's own text (``data/``: the sample SFT and preference sets and the
knowledge folder), handles Chinese and English (byte-level, so no character is unknown), and
carries the Llama-3 special tokens and chat template. Deterministic: the same text gives the
same tokenizer.

    python scripts/build_tokenizer.py [--vocab-size 6144] [--out src/zhilu/assets/tokenizer]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from zhilu.model.chat_template import (  # noqa: E402
    BOS,
    EOS,
    EOT,
    LLAMA3_CHAT_TEMPLATE,
    PAD,
    SPECIAL_TOKENS,
)
from zhilu.utils.jsonl import iter_jsonl  # noqa: E402

# Llama-3's pre-tokenizer split pattern (from its tokenizer.json).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus_lines(data_dir: Path):
    """Every text field of the project's own data, in a fixed order."""
    for path in sorted(data_dir.rglob("*")):
        if path.suffix == ".jsonl":
            for _, row, err in iter_jsonl(path):  # lines end at \n only (U+2028 stays inside its row)
                if err is not None:
                    raise SystemExit(f"error: {path}: {err}")
                yield from _strings(row)
        elif path.suffix in {".md", ".txt"}:
            yield from path.read_text(encoding="utf-8").splitlines()


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def build(lines, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    # Special tokens go after the BPE vocabulary, as in Llama-3 (ids 128000+ there).
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def save(tok: Tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[EOS],
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = LLAMA3_CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--vocab-size", type=int, default=6144)
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "zhilu" / "assets" / "tokenizer")
    args = parser.parse_args()
    lines = list(corpus_lines(args.data_dir))
    if not lines:
        sys.exit(f"error: no text found under {args.data_dir}")
    tok = build(lines, args.vocab_size)
    save(tok, args.out)
    print(f"wrote {args.out} ({tok.get_vocab_size()} tokens from {len(lines)} lines)")


if __name__ == "__main__":
    main()
