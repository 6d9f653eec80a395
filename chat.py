"""Chat: ``python chat.py model.path=<run dir | export | HF folder> [chat.temperature=0.4 ...]``.

Batch mode: ``python chat.py model.path=... prompts_file=prompts.txt output=answers.jsonl``.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from zhilu.cli import one_line_errors, set_project_root

set_project_root(Path(__file__).resolve().parent)


@hydra.main(version_base="1.3", config_path="conf", config_name="chat")
@one_line_errors
def main(cfg: DictConfig) -> None:
    import torch
    from hydra.utils import instantiate

    from zhilu.chat import ChatSession, SamplingConfig, answer_file, interactive, read_prompts
    from zhilu.model.runtime import load_model

    from zhilu.utils.io import check_output_file

    prompts = read_prompts(cfg.prompts_file) if cfg.prompts_file else None  # bad input fails before the model loads
    if prompts is not None:
        check_output_file(cfg.output, "output")
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(instantiate(cfg.model))
    session = ChatSession(model, tokenizer, cfg.system_prompt, SamplingConfig(**cfg.sampling))
    if cfg.prompts_file:
        n = answer_file(session, prompts, cfg.output)
        print(f"wrote {n} answers to {cfg.output}")
    else:
        interactive(session)


if __name__ == "__main__":
    main()
