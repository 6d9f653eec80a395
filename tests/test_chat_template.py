"""The Llama-3 template, token by token, and the assistant-only label mask."""

from zhilu.data.encode import IGNORE_INDEX, ChatEncoder
from zhilu.model.chat_template import render

EXPECTED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nUSER<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nASSISTANT<|eot_id|>"
)
MESSAGES = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USER"},
            {"role": "assistant", "content": "ASSISTANT"}]


def test_render_is_exactly_llama3():
    assert render(MESSAGES) == EXPECTED
    assert render(MESSAGES[:2], add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nUSER<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_hf_chat_template_matches(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == EXPECTED
    gen = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert gen == render(MESSAGES[:2], add_generation_prompt=True)


def test_special_tokens_are_single_tokens(tokenizer):
    for t in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"):
        assert len(tokenizer.encode(t, add_special_tokens=False)) == 1, t


def test_piecewise_encoding_equals_whole_string(tokenizer):
    from tests.conftest import DIALOGUES

    enc = ChatEncoder(tokenizer)
    for messages in DIALOGUES:
        ids, _ = enc.dialogue(messages)
        assert ids == tokenizer.encode(render(messages), add_special_tokens=False)


def test_labels_cover_every_assistant_turn_and_its_eot(tokenizer):
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "问题一"},
        {"role": "assistant", "content": "回答一"},
        {"role": "user", "content": "问题二"},
        {"role": "assistant", "content": "回答二"},
    ]
    ids, labels = ChatEncoder(tokenizer).dialogue(messages)
    assert len(ids) == len(labels)
    # labelled tokens are exactly the two answers, each with its <|eot_id|>
    labelled = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "回答一<|eot_id|>回答二<|eot_id|>"
    # ... in two contiguous spans, each right after an assistant header
    spans, start = [], None
    for i, t in enumerate(labels + [IGNORE_INDEX]):
        if t != IGNORE_INDEX and start is None:
            start = i
        elif t == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    assert len(spans) == 2
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    for s, e in spans:
        assert tokenizer.decode(ids[:s]).endswith(header)
        assert labels[s:e] == ids[s:e]
    # everything before the first answer (BOS, system, user, headers) is masked
    assert tokenizer.decode(ids[: spans[0][0]]) == render(messages[:2], add_generation_prompt=True)


# Meta's template, copied by hand from Meta-Llama-3-8B-Instruct's tokenizer_config.json ("chat_template")
META_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_shipped_template_is_metas_string_byte_for_byte(tokenizer):
    from zhilu.model.builder import shipped_tokenizer_dir
    from zhilu.model.chat_template import LLAMA3_CHAT_TEMPLATE

    assert LLAMA3_CHAT_TEMPLATE == META_LLAMA3_TEMPLATE
    assert (shipped_tokenizer_dir() / "chat_template.jinja").read_bytes() == META_LLAMA3_TEMPLATE.encode()
    assert tokenizer.chat_template == META_LLAMA3_TEMPLATE


def test_every_export_carries_metas_template_even_from_an_older_tokenizer(tokenizer, tmp_path):
    """A tokenizer saved with the template this project wrote before (one space more) is loaded with
    Meta's string, and the exports (adapter, merged and the export dir itself) write Meta's bytes."""
    from tests.conftest import TINY
    from zhilu.adapters.lora import LoRA
    from zhilu.model import ModelBuilder
    from zhilu.model.chat_template import PREVIOUS_TEMPLATES

    old = tmp_path / "old_tokenizer"
    tokenizer.chat_template = PREVIOUS_TEMPLATES[0]
    try:
        tokenizer.save_pretrained(old)
    finally:
        tokenizer.chat_template = META_LLAMA3_TEMPLATE
    assert (old / "chat_template.jinja").read_text() == META_LLAMA3_TEMPLATE.replace("\n\n'+ m", "\n\n' + m")
    builder = ModelBuilder(config=TINY, tokenizer_path=str(old))
    tok = builder.load_tokenizer()
    assert tok.chat_template == META_LLAMA3_TEMPLATE
    model = LoRA(r=2).apply(builder.build(tok, device_type="cpu"))
    LoRA(r=2).export(model, tok, tmp_path / "export")
    for folder in ("export", "export/merged", "export/adapter"):
        assert (tmp_path / folder / "chat_template.jinja").read_bytes() == META_LLAMA3_TEMPLATE.encode(), folder
