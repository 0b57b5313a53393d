"""What the experiments' CLI tests share."""
from __future__ import annotations

from pathlib import Path

from experiments import cli as experiments_cli
from tests.conftest import nontrivial_model, tiny_config


def refuses_a_model_without_directions(command: str, tmp_path: Path, capsys, *args: str) -> Path:
    """`python -m experiments COMMAND --model M [args]` on a tiny model without directions exits 2, names the model
    and writes no page; -> M, for the test to go on with."""
    model = tmp_path / "model"
    nontrivial_model(tiny_config()).save_pretrained(model)
    out = tmp_path / f"{command}.md"
    assert experiments_cli.main([command, "--model", str(model), *args, "--out", str(out)]) == 2
    assert f"{model} has no directions" in capsys.readouterr().err and not out.exists()
    return model
