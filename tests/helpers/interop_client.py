"""Load an export with whatever transformers/peft this interpreter has; print what it computed as JSON.

Run by tests/test_interop.py with the python of a separate virtual environment (transformers 4.x,
peft 0.1x), so it imports nothing from zhilu or the tests. Input (stdin, JSON): ``model`` (a Hugging
Face folder), optional ``adapter`` (a peft folder loaded onto ``model``), ``ids`` (token ids to score),
``texts`` (to tokenize), ``messages`` (for the chat template). Output (stdout, last line): versions,
the config as read, logits, token ids, the rendered chat template, and what gguf's vocabulary reader
(the part of llama.cpp's converter shipped in the ``gguf`` package) reads from the folder.
"""

import json
import sys


def main() -> None:
    req = json.loads(sys.stdin.read())
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = {"transformers": transformers.__version__, "transformers_file": transformers.__file__}
    cfg = AutoConfig.from_pretrained(req["model"])
    rope = getattr(cfg, "rope_theta", None)
    if rope is None and isinstance(getattr(cfg, "rope_parameters", None), dict):
        rope = cfg.rope_parameters.get("rope_theta")
    out["rope_theta"] = rope
    out["rope_scaling"] = getattr(cfg, "rope_scaling", None)
    model = AutoModelForCausalLM.from_pretrained(req["model"], torch_dtype=torch.float32).eval()
    if req.get("adapter"):
        import peft
        from peft import PeftModel

        import warnings

        out["peft"] = peft.__version__
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(model, req["adapter"]).eval()
        out["peft_warnings"] = [str(w.message) for w in caught]
    with torch.no_grad():
        out["logits"] = model(input_ids=torch.tensor(req["ids"])).logits.tolist()
    tok = AutoTokenizer.from_pretrained(req.get("adapter") or req["model"])
    out["tokenizer_class"] = type(tok).__name__
    out["specials"] = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token")}
    out["ids"] = [tok(t)["input_ids"] for t in req.get("texts", [])]
    out["decoded"] = [tok.decode(i, skip_special_tokens=False) for i in out["ids"]]
    if req.get("messages"):
        out["chat"] = tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=False)
    try:
        import gguf

        sv = gguf.SpecialVocab(req["model"], load_merges=True)
        out["gguf"] = {"special_token_ids": sv.special_token_ids, "chat_template": sv.chat_template,
                       "n_merges": len(sv.merges)}
    except ImportError:
        out["gguf"] = None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
