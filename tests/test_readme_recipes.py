"""The README's extension recipes are true when followed literally: each Python block of
"Extending tcpnet" is saved as its own file outside the package, imported, and what it registers
builds, runs and is found by name."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _recipe_blocks() -> list:
    text = README.read_text()
    section = text[text.index("## Extending tcpnet"):text.index("## Development")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_every_python_recipe_is_one_file_that_works(tmp_path):
    blocks = _recipe_blocks()
    assert len(blocks) >= 4
    for i, code in enumerate(blocks):
        (tmp_path / f"recipe_{i}.py").write_text(code)
    check = textwrap.dedent(f"""
        import importlib, torch
        for i in range({len(blocks)}):
            importlib.import_module(f"recipe_{{i}}")
        from tcpnet.data.formats import list_formats
        from tcpnet.engine.hooks import list_hooks
        from tcpnet.engine.optim import build_param_groups
        from tcpnet.models import build_model
        model = build_model("my_net+max", num_classes=5, num_segments=4, width=16).eval()
        assert model.num_segments == 4 and model.backbone.num_features == 16
        logits = model(torch.randn(2, 3, 4, 64, 64))
        assert logits.shape == (2, 5) and torch.isfinite(logits).all()
        groups = {{g["name"]: g for g in build_param_groups(model, lr_x_factor=5)}}
        assert groups["MAX_weight"]["lr_mult"] == 3.0 and len(groups["MAX_weight"]["params"]) == 1
        assert build_model("my_net+tcp", num_classes=3, num_segments=8, dim=8, mid_channels=16).num_segments == 8
        assert "my_csv" in list_formats() and "step_counter" in list_hooks()
        print("recipes ok")
    """)
    res = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and "recipes ok" in res.stdout, res.stderr[-3000:]
