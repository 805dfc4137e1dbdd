"""The `coin` command: dispatch, help, errors, and the benchmark runner's RESULTS.md handling."""
import subprocess
import sys

from coin import bench
from coin.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_command_module_has_the_interface():
    import importlib

    for name, (module, _) in COMMANDS.items():
        m = importlib.import_module(module)
        assert callable(m.add_arguments) and callable(m.main), name


def test_unknown_benchmark_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "coin", "bench", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown benchmark 'nonsense'" in proc.stderr


def test_results_sections_are_replaced_and_kept(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    bench.write_results({"step": "## step\nold\n", "gpu": "## gpu\nH100 figures\n"}, path)
    sections = bench._sections(open(path).read())
    sections["step"] = "## step\nnew\n"
    bench.write_results(sections, path)
    text = open(path).read()
    assert "new" in text and "old" not in text and "H100 figures" in text
    assert text.index("## step") < text.index("## gpu")


def test_assignments_parse_name_value_options():
    import pytest

    from coin.cli import assignments
    from coin.errors import CoinError

    assert assignments(["a=b", " c = d,e "], "--map", "FIELD=COLUMN") == {"a": "b", "c": "d,e"}
    for bad in ("a", "=b", "a="):
        with pytest.raises(CoinError, match="--map: expected FIELD=COLUMN"):
            assignments([bad], "--map", "FIELD=COLUMN")
