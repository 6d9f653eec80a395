"""``python -m zhilu.data.prepare data=<config> [model=...]``: build the tokenized stores of a data config.

The same config group as training (``conf/data/``) and the model's tokenizer (``conf/model/``), so
``python train.py data=X model=Y`` afterwards finds every store in ``data.cache_dir`` and only maps
it. With ``check=true`` (default) the splits are then read as training reads them, so a bad row or
an overlong sample stops here with the same one-line error. Prints one line per store.
"""

from __future__ import annotations

import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from zhilu.cli import ROOT, one_line_errors, set_project_root

set_project_root()


def prepare(cfg: DictConfig) -> dict:
    """Build (or find) every store of ``cfg.data``; returns the data module's stats."""
    t0 = time.perf_counter()
    tokenizer = instantiate(cfg.model).load_tokenizer()
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    dm.prepare_data()
    for inp, st in dm._stores.items():
        m = st.meta
        examples = m["counts"]["ok"] + m["counts"]["truncated"]
        print(f"{inp.path}: {m['rows']} rows -> {examples} examples, {m['tokens']} tokens "
              f"({m['build_s']:.1f} s on {m['num_proc']} processes when built) in {st.path}")
    if cfg.get("check", True):
        dm.setup("fit")
    print(f"prepared in {time.perf_counter() - t0:.1f} s: " +
          ", ".join(f"{k}={v}" for k, v in dm.stats.items() if not k.startswith("packing/")))
    return dm.stats


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="prepare")
@one_line_errors
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
