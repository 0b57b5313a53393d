"""Which package may import which, read off every module's imports (ast), and what `import flow_model` loads.

flow_model (the model library) <- flow_model.training <- app, experiments; scripts and bench may use any of them.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flow_model", "app", "experiments")
CLI = ("flow_model.cli", "flow_model.__main__", "flow_model.commands")  # flow_model's command line may run training


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of everything the module imports, at any depth (deferred imports inside functions too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


MODULES = {module_name(p): imports(p) for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(modules, forbidden) -> dict[str, list[str]]:
    bad = {m: sorted(i for i in found if any(within(i, f) for f in forbidden)) for m, found in modules.items()}
    return {m: found for m, found in bad.items() if found}


def test_the_modules_were_found():
    assert {"flow_model.glow", "flow_model.training.trainer", "app.service", "experiments.ablation"} <= set(MODULES)
    assert "flow_model.training.checkpoint" in MODULES["app.service"]


def test_the_library_imports_neither_the_editor_nor_the_experiments():
    library = {m: found for m, found in MODULES.items() if within(m, "flow_model")}
    assert offenders(library, ("app", "experiments")) == {}


def test_the_library_outside_training_and_its_cli_imports_nothing_of_training():
    core = {m: found for m, found in MODULES.items()
            if within(m, "flow_model") and not within(m, "flow_model.training") and not any(within(m, c) for c in CLI)}
    assert offenders(core, ("flow_model.training",)) == {}


def test_the_editor_never_imports_the_trainer_or_the_experiments():
    editor = {m: found for m, found in MODULES.items() if within(m, "app")}
    assert offenders(editor, ("flow_model.training.trainer", "torch.distributed", "experiments")) == {}


def test_what_the_editor_may_use_of_training_does_not_import_the_trainer():
    assert offenders({"checkpoint": MODULES["flow_model.training.checkpoint"]},
                     ("flow_model.training.trainer", "torch.distributed")) == {}


def test_the_experiments_are_imported_by_no_package():
    others = {m: found for m, found in MODULES.items() if not within(m, "experiments")}
    assert offenders(others, ("experiments",)) == {}


@pytest.mark.parametrize("module, heavy", [
    ("flow_model", ("gradio", "dlib", "sklearn", "matplotlib", "flow_model.training")),
    ("flow_model.training.checkpoint", ("gradio", "dlib", "sklearn", "matplotlib", "flow_model.training.trainer")),
    ("app.service", ("gradio", "matplotlib", "flow_model.training.trainer")),
])
def test_importing_a_module_loads_only_what_it_should(module, heavy):
    """(torch.distributed itself is loaded by `import torch`, so the trainer's module stands for it here.)"""
    code = (f"import json, sys; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted({h.split('.')[0] for h in heavy})!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m for m in loaded if any(within(m, h) for h in heavy)] == []
