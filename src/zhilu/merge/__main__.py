"""``python -m zhilu.merge merge=linear|ties|dare_ties|slerp|task_arithmetic models=[...] base=...``

Composes ``conf/merge.yaml`` (method from ``conf/merge/``), checks the inputs, merges with
mergekit and writes ``<run dir>/merged`` (a Hugging Face model + ``merge_config.yaml``); the run
dir itself then works as ``model.path`` for training, chat and evaluation.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from zhilu.cli import ROOT, instantiate, one_line_errors, set_project_root

set_project_root()


def instantiate_method(node: DictConfig):
    """The merge method of ``conf/merge/``; a user error from its constructor raises as itself."""
    return instantiate(node)


def run(cfg: DictConfig) -> str:
    """Merge as ``cfg`` (a composed ``conf/merge.yaml``) says; returns the merged folder."""
    from zhilu.merge.run import merge

    method = instantiate_method(cfg.merge)
    models = OmegaConf.to_container(cfg.models, resolve=True) if cfg.models is not None else []
    base = cfg.base
    if base is not None and OmegaConf.is_config(base):
        base = OmegaConf.to_container(base, resolve=True)
    options = OmegaConf.to_container(cfg.options, resolve=True) if cfg.get("options") else {}
    out = merge(method, models, cfg.output_dir, base=base, base_from_run_dir=cfg.get("base_from_run"),
                dtype=cfg.dtype, out_dtype=cfg.get("out_dtype"), options=options, seed=cfg.seed,
                overwrite=cfg.overwrite)
    print(out)
    return str(out)


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="merge")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
