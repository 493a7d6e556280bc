import numpy as np
from PIL import Image

from regtorch import plotting
from regtorch.nn.loop import History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _valid_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w > 200 and h > 200
        # not a blank canvas
        assert len(set(im.convert("L").get_flattened_data())) > 10


def test_plots_are_valid_pngs(tmp_path):
    h = History(
        train_loss=[1.0, 0.5, 0.25], val_loss=[1.2, 0.6, 0.3], time=[0.1, 0.2, 0.3], lr=[1e-3] * 3
    )
    x = np.linspace(-2, 2, 50)
    y = 2 * x + 1 + np.random.default_rng(0).normal(size=50)
    paths = [
        plotting.plot_loss_curves(h, tmp_path / "loss.png"),
        plotting.plot_fit(x, y, x, 2 * x + 1, tmp_path / "fit.png", equation="y = 2 x + 1"),
        plotting.plot_predicted_vs_true(y, 2 * x + 1, tmp_path / "pvt.png"),
        plotting.plot_residuals(y, 2 * x + 1, tmp_path / "res.png"),
    ]
    for p in paths:
        _valid_png(p)
    assert not list(tmp_path.glob("*.tmp"))
