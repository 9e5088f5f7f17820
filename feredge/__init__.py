"""feredge: facial-expression recognition from training to a camera on a Raspberry Pi or a Jetson.

The kit's packages install under this one name (`feredge.edge`, `feredge.evaluation`,
`feredge.models`, `feredge.export`, `feredge.benchmarks`), so they never collide with a user's
own `models` or `export`. In the repository they sit beside this folder, not inside it: pip maps
them in (pyproject's package-dir), and a bare checkout on PYTHONPATH finds them through the
extension of __path__ below, as the aarch64 emulation and a copied-over Pi checkout run it.
"""
from pathlib import Path

__version__ = "0.2.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "edge" / "backends").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 (a package's own __path__)
