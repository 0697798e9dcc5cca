"""A plan made from a user's own config.json and node file is self-contained: every consumer
(the executor's CPU check, the layout planner, the simulator) uses it after both files are gone."""

import json
import pathlib
import shutil

from planners.plan import load_plan
from tierplan.cli import main

REPO = pathlib.Path(__file__).resolve().parents[2]


def _user_files(where: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    where.mkdir()
    cfg = json.loads((REPO / "simulator/presets/models/llama-3.2-1b.json").read_text())
    cfg.update(num_hidden_layers=2, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
               num_key_value_heads=4, head_dim=64)
    (where / "config.json").write_text(json.dumps(cfg))
    node = json.loads((REPO / "hwmodels/presets/nodes/1xH200.json").read_text())
    node.update(name="my-h200-box", description="a user's own node file")
    (where / "my-node.json").write_text(json.dumps(node))
    return where / "config.json", where / "my-node.json"


def test_a_plan_from_user_files_works_everywhere_after_they_are_gone(tmp_path, monkeypatch, capsys):
    cfg, node = _user_files(tmp_path / "mine")
    out = tmp_path / "d"
    assert main(["plan", "--model", str(cfg), "--hardware", str(node), "--seq-len", "8K",
                 "--optimizer", "adamw", "--time-limit", "20", "--out", str(out), "--json"]) == 0
    shutil.rmtree(tmp_path / "mine")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(out / "plan.json", fresh / "plan.json")
    monkeypatch.chdir(fresh)
    capsys.readouterr()

    plan = load_plan("plan.json")
    assert plan.scenario.model.num_layers == 2 and plan.scenario.model.hidden_size == 1024
    assert plan.scenario.node.name == "my-h200-box"

    assert main(["validate", "plan", "plan.json", "--smoke", "--json"]) == 0
    assert main(["layout", "--plan", "plan.json", "--time-limit", "5", "--no-png", "--json"]) == 0
    capsys.readouterr()
    assert main(["simulate", "--plan", "plan.json", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert abs(sim["step_time_s"] - plan.prediction.step_time_s) < 1e-6  # the file rounds to 6 decimals
    assert sim["peak_bytes"]["hbm"] == plan.prediction.peak_hbm_bytes
