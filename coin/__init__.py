"""CoIN: Contrastive Instruction Tuning at scale.

`coin.training`, `coin.data_tools` and `coin.eval` live in the repository's top-level folders
`training/`, `data_tools/` and `eval/` (setup.py maps them). When the package is imported from a
source checkout that was not installed, the same mapping is made here so `python -m coin ...`
works from the repository root too.
"""
import os as _os

__version__ = "0.1.0"

_repo_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "training")) and _os.path.isfile(
    _os.path.join(_repo_root, "training", "__init__.py")
):
    # Source checkout: let `coin.training` resolve to <repo>/training, and so on.
    __path__.append(_repo_root)  # noqa: F821  (module attribute of a package)
