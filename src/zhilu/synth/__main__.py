"""``python -m zhilu.synth {evol,self_evolve} [key=value ...]``: Hydra apps on ``conf/synth/*.yaml``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from zhilu.cli import ROOT, one_line_errors, set_project_root

COMMANDS = {"evol": "run_evol", "self_evolve": "run_self_evolve"}
USAGE = ("usage: python -m zhilu.synth {evol,self_evolve} [key=value ...]\n"
         "  evol         evolve seed instructions (conf/synth/evol.yaml)\n"
         "  self_evolve  uncertainty-driven retrieval self-evolution (conf/synth/self_evolve.yaml)\n"
         "  add --cfg job to print the composed config, --help for Hydra's help")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2)
    command = argv.pop(1)
    set_project_root()
    conf_dir = Path(os.environ.get("ZHILU_ROOT", ROOT)) / "conf"
    if not (conf_dir / "synth" / f"{command}.yaml").is_file():
        print(f"error: {conf_dir}/synth/{command}.yaml not found (set ZHILU_ROOT to the checkout)", file=sys.stderr)
        sys.exit(2)

    import hydra

    from zhilu.synth import app

    task = getattr(app, COMMANDS[command])
    sys.argv = argv
    hydra.main(version_base="1.3", config_path=str(conf_dir), config_name=f"synth/{command}")(one_line_errors(task))()


if __name__ == "__main__":
    main()
