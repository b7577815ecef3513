"""mcan-train as a user runs it: exit codes, one-line errors, the summary."""

from __future__ import annotations

import tomli_w

from mcan_deploy.cli.train import main

from .helpers import tiny_plan_dict


def test_bad_plan_is_one_line_naming_the_file(tmp_path, capsys):
    data = tiny_plan_dict()
    data["model"]["depth"] = 3
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(data))
    rc = main(["--config", str(plan), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.count("\n") == 0 and err.startswith("mcan-train: error:") and "plan.toml" in err
    assert "unknown key 'depth'" in err


def test_missing_data_folder(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(tiny_plan_dict()))
    rc = main(
        ["--config", str(plan), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    assert rc == 1
    assert "nowhere" in capsys.readouterr().err


def test_run_then_rerun_says_finished(sample_dir, tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(tiny_plan_dict()))
    args = ["--config", str(plan), "--data", str(sample_dir), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run finished" in out and "identity (LR vs HR)" in out and "phase" in out
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
