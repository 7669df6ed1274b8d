"""The teaching figures: the script writes the same bytes twice, and the checked-in files are its output
names (no date or creator inside, so a rerun with the same matplotlib reproduces them)."""

import pathlib

from derive.explain import figures

IMG = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img"


def test_figures_are_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert figures.main(["--out", str(first)]) == 0
    assert figures.main(["--out", str(second)]) == 0
    for name in figures.FIGURES:
        data = (first / name).read_bytes()
        assert data == (second / name).read_bytes(), name
        assert b"<dc:date>" not in data and b"Matplotlib v" not in data, name
        assert (IMG / name).exists(), f"docs/img/{name}: run python -m derive.explain.figures"


def test_error_figure_orders_separate():
    """The convergence figure shows what it says: on its last halving each order's error drops by about 2^K."""
    for order in (1, 2, 3):
        ratio = figures.sample_error(order, 64) / figures.sample_error(order, 128)
        assert abs(ratio - 2**order) < 0.2 * 2**order, (order, ratio)
