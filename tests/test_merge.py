"""Merging (issue 8) on the small model: hand-computed tensors, mergekit CLI parity, input checks."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY
from zhilu.errors import ConfigError, ModelPathError
from zhilu.merge import (CONFIG_NAME, DareTies, Linear, Slerp, TaskArithmetic, Ties, base_from_run, merge,
                         plan_merge)
from zhilu.model import ModelBuilder

pytest.importorskip("mergekit")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def save(model, tokenizer, folder: Path, state: dict | None = None) -> Path:
    if state is not None:
        model.load_state_dict(state)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def zoo(tokenizer, tmp_path_factory):
    """base; ft = base + δ1; same = base + δ2 with sign(δ2) = sign(δ1); clash = base + δ3 (mixed signs)."""
    root = tmp_path_factory.mktemp("zoo")
    model = ModelBuilder(config=TINY, seed=0, dtype="float32").build(tokenizer)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    d1 = {k: 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    d2 = {k: 0.01 * torch.randn(v.shape, generator=g).abs() * d1[k].sign() for k, v in base.items()}
    d3 = {k: 0.03 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    paths = {
        "base": save(model, tokenizer, root / "base", base),
        "ft": save(model, tokenizer, root / "ft", {k: base[k] + d1[k] for k in base}),
        "same": save(model, tokenizer, root / "same", {k: base[k] + d2[k] for k in base}),
        "clash": save(model, tokenizer, root / "clash", {k: base[k] + d3[k] for k in base}),
    }
    return {"root": root, **{k: str(v) for k, v in paths.items()}}


def merged(zoo, method, models, name, **kw) -> dict[str, torch.Tensor]:
    out = Path(zoo["root"]) / "out" / name
    kw.setdefault("base", zoo["base"])
    return weights(merge(method, models, out, overwrite=True, **kw))


# ---------------------------------------------------------------------------- linear
@pytest.mark.parametrize("weight,expected", [(1.0, "ft"), (0.0, "base")])
def test_linear_end_points_reproduce_the_inputs_exactly(zoo, weight, expected):
    out = merged(zoo, Linear(weight=weight), [zoo["ft"]], f"linear{weight}")
    want = weights(zoo[expected])
    assert out.keys() == want.keys()
    assert all(torch.equal(out[k], want[k]) for k in want)


def test_linear_half_is_the_elementwise_average(zoo):
    out = merged(zoo, Linear(weight=0.5), [zoo["ft"]], "linear_half")
    a, b = weights(zoo["base"]), weights(zoo["ft"])
    assert all(torch.equal(out[k], (a[k] + b[k]) / 2) for k in a)
    assert not torch.equal(out["lm_head.weight"], a["lm_head.weight"])


def test_linear_without_base_normalises_the_weights(zoo):
    out = merged(zoo, Linear(weight=[3.0, 1.0]), [zoo["ft"], zoo["same"]], "linear_nobase", base=None)
    a, b = weights(zoo["ft"]), weights(zoo["same"])
    for k in a:
        torch.testing.assert_close(out[k], 0.75 * a[k] + 0.25 * b[k], rtol=0, atol=1e-7)


# ------------------------------------------------------------------ task vectors
def test_ties_and_dare_at_density_1_without_sign_conflicts_are_task_arithmetic(zoo):
    models, w = [zoo["ft"], zoo["same"]], [0.6, 0.3]
    base, a, b = weights(zoo["base"]), weights(zoo["ft"]), weights(zoo["same"])
    ta = merged(zoo, TaskArithmetic(weight=w), models, "ta")
    for k in base:  # hand-computed task arithmetic
        torch.testing.assert_close(ta[k], base[k] + 0.6 * (a[k] - base[k]) + 0.3 * (b[k] - base[k]),
                                   rtol=0, atol=1e-6)
    ties = merged(zoo, Ties(weight=w, density=1.0), models, "ties1")
    dare = merged(zoo, DareTies(weight=w, density=1.0), models, "dare1")
    for k in base:
        assert torch.equal(ties[k], ta[k]), k
        assert torch.equal(dare[k], ta[k]), k
    # control: with sign conflicts TIES drops the minority entries, so it differs
    clash = merged(zoo, Ties(weight=w, density=1.0), [zoo["ft"], zoo["clash"]], "ties_clash")
    ta_clash = merged(zoo, TaskArithmetic(weight=w), [zoo["ft"], zoo["clash"]], "ta_clash")
    assert not torch.equal(clash["lm_head.weight"], ta_clash["lm_head.weight"])


def test_ties_trims_each_task_vector_to_its_density(zoo):
    base, ft = weights(zoo["base"]), weights(zoo["ft"])
    out = merged(zoo, Ties(weight=1.0, density=0.25), [zoo["ft"]], "ties_quarter")
    for k in ("lm_head.weight", "model.layers.0.mlp.up_proj.weight"):
        delta = ft[k] - base[k]
        k_keep = int(0.25 * delta.numel())
        keep = torch.zeros(delta.numel(), dtype=torch.bool)
        keep[delta.abs().flatten().argsort(descending=True)[:k_keep]] = True
        expected = base[k] + torch.where(keep.view_as(delta), delta, torch.zeros_like(delta))
        torch.testing.assert_close(out[k], expected, rtol=0, atol=1e-7)


def test_slerp_interpolates_each_tensor_on_the_sphere(zoo):
    base, ft = weights(zoo["base"]), weights(zoo["ft"])
    for t, want in ((0.0, base), (1.0, ft)):
        out = merged(zoo, Slerp(t=t), [zoo["ft"]], f"slerp{t}")
        torch.testing.assert_close(out["lm_head.weight"], want["lm_head.weight"], rtol=0, atol=1e-6)
    out = merged(zoo, Slerp(t=0.3), [zoo["ft"]], "slerp0.3")
    k = "model.layers.1.self_attn.q_proj.weight"
    a, b = base[k].flatten().double(), ft[k].flatten().double()
    theta = math.acos(float(a @ b / (a.norm() * b.norm())))
    expected = (math.sin(0.7 * theta) * a + math.sin(0.3 * theta) * b) / math.sin(theta)
    torch.testing.assert_close(out[k].flatten().double(), expected, rtol=0, atol=1e-6)
    lerp = 0.7 * a + 0.3 * b  # the linear mix of two far-apart vectors is shorter than slerp's
    assert out[k].norm() > lerp.norm() * 1.05


# ------------------------------------------------------------------------- output
def test_merged_model_loads_generates_and_reruns_through_the_mergekit_cli(zoo, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge(DareTies(weight=0.8, density=0.5), [zoo["ft"]], tmp_path / "dare", base=zoo["base"], seed=7)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.get_vocab() == tokenizer.get_vocab()
    ids = torch.tensor([tok.encode("信用卡的免息期是多久？")])
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                         do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4
    # merge_config.yaml through the mergekit CLI (seed from its header line) gives the same tensors
    text = (out / CONFIG_NAME).read_text()
    assert "--random-seed 7" in text.splitlines()[1]
    cli = shutil.which("mergekit-yaml") or pytest.skip("mergekit-yaml not on PATH")
    rerun = tmp_path / "rerun"
    subprocess.run([cli, str(out / CONFIG_NAME), str(rerun), "--random-seed", "7", "--quiet"],
                   check=True, capture_output=True, cwd=tmp_path)
    a, b = weights(out), weights(rerun)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = weights(zoo["base"])  # and the drop really happened: about half of each task vector is base
    unchanged = (a["lm_head.weight"] == base["lm_head.weight"]).float().mean().item()
    assert 0.4 < unchanged < 0.6


def test_adapter_runs_merge_their_export(zoo, tokenizer, tmp_path):
    """A DoRA run dir, its export/ or export/adapter dir all stand for export/merged."""
    from peft import PeftModel

    from zhilu.adapters import LoRA

    adapter = LoRA(r=4, alpha=8, dropout=0.0, use_dora=True, init_lora_weights=False)
    net = ModelBuilder(path=zoo["base"], dtype="float32").build(tokenizer)
    peft_model = adapter.apply(net)
    adapter.export(peft_model, tokenizer, tmp_path / "run" / "export")
    want = weights(tmp_path / "run" / "export" / "merged")
    assert not torch.equal(want["model.layers.0.self_attn.q_proj.weight"],
                           weights(zoo["base"])["model.layers.0.self_attn.q_proj.weight"])
    for given in ("run", "run/export", "run/export/adapter"):
        out = merged(zoo, Linear(weight=1.0), [str(tmp_path / given)], "dora_" + given.replace("/", "_"))
        assert all(torch.equal(out[k], want[k]) for k in want), given
    # a bare peft adapter whose base is a local folder: mergekit merges it into that base first
    bare = tmp_path / "bare_adapter"
    shutil.copytree(tmp_path / "run" / "export" / "adapter", bare)
    cfg = json.loads((bare / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = zoo["base"]
    (bare / "adapter_config.json").write_text(json.dumps(cfg))
    plan = plan_merge(Linear(weight=1.0), [str(bare)], tmp_path / "unused", base=zoo["base"])
    assert plan.config["models"][0]["model"].endswith("+" + str(bare.resolve()))
    out = merged(zoo, Linear(weight=1.0), [str(bare)], "bare_adapter")
    reference = PeftModel.from_pretrained(ModelBuilder(path=zoo["base"], dtype="float32").build(), bare)
    ref = reference.merge_and_unload().state_dict()
    for k in want:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-6)


def test_base_from_run_rebuilds_the_seeded_initialisation(tokenizer, tmp_path):
    from omegaconf import OmegaConf

    model_cfg = {"_target_": "zhilu.model.ModelBuilder", "name": "llama3_tiny", "path": None, "seed": 5,
                 "dtype": "auto", "config": dict(TINY, vocab_size=None)}
    (tmp_path / "run").mkdir()
    OmegaConf.save({"seed": 5, "model": model_cfg}, tmp_path / "run" / "config_resolved.yaml")
    got = weights(base_from_run(tmp_path / "run", tmp_path / "base").folder)
    want = ModelBuilder(config=TINY, seed=5).build(tokenizer).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # with the tokenizer the run exported (the shipped one may have changed since the run)
    from transformers import AutoTokenizer

    run_tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    run_tok.add_tokens(["<|run_only|>"])
    run_tok.save_pretrained(tmp_path / "run" / "export" / "merged")
    got = weights(base_from_run(tmp_path / "run", tmp_path / "base2").folder)
    assert got["lm_head.weight"].shape[0] == len(tokenizer) + 1
    want = ModelBuilder(config=TINY, seed=5, tokenizer_path=str(tmp_path / "run" / "export" / "merged"))
    want = want.build(want.load_tokenizer()).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # a run trained from model.path: that path is the base
    OmegaConf.save({"model": dict(model_cfg, path=str(tmp_path / "base"))}, tmp_path / "run" / "config_resolved.yaml")
    assert base_from_run(tmp_path / "run", tmp_path / "unused").folder == tmp_path / "base"


# ------------------------------------------------------------------------- checks
def _variant(zoo, tokenizer, tmp_path, name, config: dict | None = None, tok=None) -> str:
    """A model folder with a different config or tokenizer; its weights file is garbage, so an
    error about shapes or vocabulary proves the check ran before any tensor was read."""
    folder = tmp_path / name
    shutil.copytree(zoo["base"], folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(config)
        cfg = {k: v for k, v in cfg.items() if v is not None}  # None: leave the field out
        (folder / "config.json").write_text(json.dumps(cfg))
    if tok is not None:
        tok.save_pretrained(folder)
    return str(folder)


def test_incompatible_inputs_fail_before_loading_a_tensor(zoo, tokenizer, tmp_path):
    wide = _variant(zoo, tokenizer, tmp_path, "wide", {"hidden_size": 96})
    with pytest.raises(ConfigError, match=r"models\[0\]=.*wide does not match base=.*hidden_size=96 vs 64"):
        plan_merge(Linear(), [wide], tmp_path / "o", base=zoo["base"])
    other = _variant(zoo, tokenizer, tmp_path, "mistral", {"model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    with pytest.raises(ConfigError, match="model_type='mistral' vs 'llama'"):
        plan_merge(Ties(), [other], tmp_path / "o", base=zoo["base"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo["base"])
    tok.add_tokens(["<|fin_new|>"])
    grown = _variant(zoo, tokenizer, tmp_path, "grown", {"vocab_size": len(tok)}, tok)
    with pytest.raises(ConfigError, match="vocab_size"):
        plan_merge(Linear(), [grown], tmp_path / "o", base=zoo["base"])
    same_size = _variant(zoo, tokenizer, tmp_path, "same_size", None, tok)  # same vocab_size, other tokens
    with pytest.raises(ConfigError, match=r"different vocabulary .*<\|fin_new\|>"):
        plan_merge(Linear(), [same_size], tmp_path / "o", base=zoo["base"])
    with pytest.raises(ModelPathError, match=r"models\[1\]=.*nowhere: no such directory"):
        plan_merge(Linear(weight=0.1), [zoo["ft"], str(tmp_path / "nowhere")], tmp_path / "o", base=zoo["base"])
    with pytest.raises(ModelPathError, match=r"base=.*empty: not a Hugging Face model folder"):
        (tmp_path / "empty").mkdir()
        plan_merge(Linear(), [zoo["ft"]], tmp_path / "o", base=str(tmp_path / "empty"))
    # a field left to its default (head_dim = hidden / heads) is no mismatch; planning reads no weights
    implicit = _variant(zoo, tokenizer, tmp_path, "implicit_head_dim", {"head_dim": None, "mlp_bias": None})
    plan = plan_merge(Linear(), [implicit], tmp_path / "o", base=zoo["base"])
    assert plan.config["models"][0]["model"] == str(Path(implicit).resolve())
    with pytest.raises(ConfigError, match="is the same model as"):
        plan_merge(Linear(weight=0.5), [zoo["base"]], tmp_path / "o", base=zoo["base"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method,models,kw,message", [
    (lambda: Ties(density=0.0), ["ft"], {}, r"models\[0\].density=0.0: must be in \(0, 1\]"),
    (lambda: DareTies(density=[0.5, 1.5]), ["ft", "same"], {}, r"models\[1\].density=1.5"),
    (lambda: Ties(), [{"path": "ft", "density": -1}], {}, r"models\[0\].density=-1.0"),
    (lambda: Ties(weight=[0.5]), ["ft", "same"], {}, r"merge.weight=\[0.5\]: 1 values for 2 model"),
    (lambda: Ties(normalize=True, weight=0.3), ["ft"], {}, "weight=0.3 divides out"),
    (lambda: Linear(weight=[0.7, 0.6]), ["ft", "same"], {}, "sum to 1.3 > 1"),
    (lambda: Linear(weight=-0.2), ["ft"], {}, r"weight=-0.2: linear weights must be >= 0"),
    (lambda: Linear(), ["ft"], {"base": None}, "without a base needs at least two models"),
    (lambda: TaskArithmetic(), ["ft"], {"base": None}, "needs the base model"),
    (lambda: Slerp(), ["ft", "same"], {}, "at most 1 fine-tuned model"),
    (lambda: Linear(), [{"path": "ft", "density": 0.5}], {}, r"models\[0\].density: merge=linear takes per-model weight"),
    (lambda: Linear(), [], {}, "no models to merge"),
    (lambda: Linear(), ["ft"], {"dtype": "int8"}, "dtype='int8'"),
])
def test_nonsensical_parameters_are_named(zoo, tmp_path, method, models, kw, message):
    resolved = [dict(m, path=zoo[m["path"]]) if isinstance(m, dict) else zoo[m] for m in models]
    kw = {"base": zoo["base"], **kw}
    with pytest.raises(ConfigError, match=message):
        plan_merge(method(), resolved, tmp_path / "o", **kw)


def test_method_constructors_check_scalars():
    with pytest.raises(ConfigError, match=r"merge.t=1.5: must be in \[0, 1\]"):
        Slerp(t=1.5)
    with pytest.raises(ConfigError, match="merge.t=-0.1"):
        Slerp(t=[0.0, -0.1])
    with pytest.raises(ConfigError, match="merge.scale=nan: must be finite"):
        TaskArithmetic(scale=float("nan"))


def test_unknown_mergekit_options_and_missing_mergekit_are_named(zoo, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="options.lazy_unpickel: not a mergekit option"):
        plan_merge(Linear(), [zoo["ft"]], tmp_path / "o", base=zoo["base"], options={"lazy_unpickel": True})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mergekit" else real(name, *a))
    with pytest.raises(ConfigError, match="merging needs mergekit: pip install mergekit"):
        plan_merge(Linear(), [zoo["ft"]], tmp_path / "o", base=zoo["base"])


def test_output_dir_is_not_overwritten_by_accident(zoo, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty .*overwrite=true"):
        plan_merge(Linear(), [zoo["ft"]], tmp_path / "o", base=zoo["base"])


# --------------------------------------------------------------------- Hydra / CLI
@pytest.mark.parametrize("name,cls", [("linear", Linear), ("ties", Ties), ("dare_ties", DareTies),
                                      ("slerp", Slerp), ("task_arithmetic", TaskArithmetic)])
def test_every_merge_config_composes_and_instantiates(name, cls, zoo, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zhilu.merge.__main__ import instantiate_method, run

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("merge", overrides=[f"merge={name}", f"models=[{zoo['ft']}]", f"base={zoo['base']}",
                                          f"output_dir={tmp_path / 'm'}"])
    method = instantiate_method(cfg.merge)
    assert type(method) is cls and method.mergekit_name == name
    if name == "ties":  # one full run through the Hydra entry point
        out = Path(run(cfg))
        assert (out / CONFIG_NAME).is_file() and (out / "config.json").is_file()


def test_models_on_the_command_line_carry_their_own_weights(zoo, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zhilu.merge.__main__ import run

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("merge", overrides=[
            "merge=linear", f"models=[{{path:'{zoo['ft']}',weight:0.25}},{{path:'{zoo['same']}',weight:0.5}}]",
            f"base={zoo['base']}", f"output_dir={tmp_path / 'm'}"])
    out = Path(run(cfg))
    import yaml

    written = yaml.safe_load((out / CONFIG_NAME).read_text())
    assert [e["parameters"]["weight"] for e in written["models"]] == [0.25, 0.5, 0.25]
    base, a, b = weights(zoo["base"]), weights(zoo["ft"]), weights(zoo["same"])
    got = weights(out)
    for k in base:
        torch.testing.assert_close(got[k], 0.25 * a[k] + 0.5 * b[k] + 0.25 * base[k], rtol=0, atol=1e-7)


def test_cli_reports_bad_input_in_one_line(zoo, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "zhilu.merge", "merge=dare_ties", f"models=[{zoo['ft']}]", f"base={zoo['base']}",
         "merge.density=1.5", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: models[0].density=1.5: must be in (0, 1] (the fraction of the task vector kept)")
