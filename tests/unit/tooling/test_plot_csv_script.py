"""scripts/plot_csv.py: per-epoch values read from a CSVLogger file, and the PNG it draws."""

import importlib.util
import os

import PIL  # noqa: F401  (a test dependency: the Pillow backend is tested, never skipped)
import pytest
from PIL import Image  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts", "plot_csv.py")


def _load():
    spec = importlib.util.spec_from_file_location("plot_csv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CSV = """epoch,iteration,training/loss,validation/accuracy,lr/group_0
1,1,2.0,,
1,2,1.0,,
1,2,,0.25,
2,3,0.8,,
2,4,0.6,,
2,4,,0.5,
2,4,0.4,,
3,5,0.2,,
3,5,,0.75,0.1
"""


def test_per_epoch_means_keep_the_last_duplicate(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(CSV)
    series = _load().read_per_epoch(str(path))
    # Epoch 2's iteration 4 was logged twice (a resumed run): the last value (0.4) counts.
    assert series["training/loss"] == [(1, 1.5), (2, pytest.approx(0.6)), (3, 0.2)]
    assert series["validation/accuracy"] == [(1, 0.25), (2, 0.5), (3, 0.75)]


def test_writes_a_png_with_both_panels(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(CSV)
    plot_csv = _load()
    plot_csv.main([str(path), "--backend", "pillow"])
    png = tmp_path / "log.png"
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > height  # loss and accuracy side by side
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    first_line = tuple(int(plot_csv.COLOURS[0][i : i + 2], 16) for i in (1, 3, 5))
    assert first_line in colours  # the curves were drawn


def test_errors_name_what_was_expected(tmp_path):
    plot_csv = _load()
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="epoch,iteration"):
        plot_csv.read_per_epoch(str(other))
    only_lr = tmp_path / "lr.csv"
    only_lr.write_text("epoch,iteration,lr/group_0\n1,1,0.1\n")
    with pytest.raises(ValueError, match="--columns"):
        plot_csv.plot(str(only_lr), str(tmp_path / "x.png"), backend="pillow")
    with pytest.raises(ValueError, match="not in"):
        plot_csv.read_per_epoch(str(only_lr), ["loss"])
