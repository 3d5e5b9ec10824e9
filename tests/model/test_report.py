"""The run report: a page that references every picture it shows, and those pictures exist."""

from __future__ import annotations

import re

from click.testing import CliRunner
from PIL import Image

from raw2rgb.cli import main
from raw2rgb.model.train import Runtime, train
from tests.model.conftest import make_shards, tiny_config


def test_report_of_a_tiny_run_references_every_image(tmp_path):
    root = make_shards(tmp_path / "shards", {"train": 8, "val": 4})
    cfg = tiny_config(stage1_epochs=2)
    train(root, tmp_path / "run", cfg, Runtime(workers=0, log_every=1))
    # two conversions of one photo share a file name (convert/isp/photo.png, convert/model/photo.png)
    colours = {"isp": (200, 30, 30), "model": (30, 200, 30)}
    for method, colour in colours.items():
        (tmp_path / method).mkdir()
        Image.new("RGB", (20, 10), colour).save(tmp_path / method / "photo.png")
    r = CliRunner().invoke(main, ["-q", "report", str(tmp_path / "run"), "--dataset", str(root), "-o",
                                  str(tmp_path / "rep" / "report.html"),
                                  *[a for m in colours for a in ("--image", f"{m}={tmp_path / m / 'photo.png'}")]])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "rep" / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == ["report.png", "report_files/training_curve.png", "report_files/01-photo.png",
                       "report_files/02-photo.png"]
    for src in sources:
        img = Image.open(tmp_path / "rep" / src)
        assert img.size[0] > 10 and img.size[1] > 5
    # each caption shows its own picture
    assert [Image.open(tmp_path / "rep" / s).getpixel((5, 5)) for s in sources[2:]] == list(colours.values())
    sheet = Image.open(tmp_path / "rep" / "report.png")
    # 32² patches shown 5× larger, four rows; six columns: RAW, classical, the run's fitted profile (its
    # colour prior, taken by default), model, target, saliency
    assert sheet.size == (6 * 160 + 5 * 20, 4 * 160 + 3 * 20)
    table = page[page.index("<table>"): page.index("</table>")]
    assert [m for m in ("classical pipeline", "fitted profile", "model") if f"<td>{m}</td>" in table] == \
        ["classical pipeline", "fitted profile", "model"]
    assert "<th>PSNR (dB)</th>" in page
    assert "validation PSNR" in page and "after the last" in page
    # the library with the CLI's defaults (the run's own profile, the val split) writes the same page
    from raw2rgb.model.report import write_report
    lib = write_report(tmp_path / "run", tmp_path / "lib" / "report.html", root,
                       images=[(m, tmp_path / m / "photo.png") for m in colours])
    assert lib.read_text().replace(str(tmp_path / "lib"), "") == page.replace(str(tmp_path / "rep"), "")
    assert Image.open(lib.with_suffix(".png")).tobytes() == sheet.tobytes()
