"""Streams: folders, globs, lists and videos through one deployment; segment_many; Ray Data."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

import sed_trt
from sed_trt.cli import main

pytestmark = pytest.mark.parity
CLASSES = ["sky", "tree", "road", "person", "car"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photos of mixed sizes in a tree (one large), and one corrupt file among them."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    sizes = [(48, 64), (80, 60), (33, 97), (120, 90), (1500, 2000), (64, 64)]
    for i, (h, w) in enumerate(sizes):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sub / f"p{i}.png")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _alone(engine_dir, path, tmp_path, topk=None):
    out = tmp_path / "alone.npz"
    args = ["predict", "--engine-dir", str(engine_dir), "--image", str(path), "--classes", ",".join(CLASSES)]
    assert main([*args, "--save-npz", str(out), "--quiet", *(["--topk", str(topk)] if topk else [])]) == 0
    return np.load(out)["labels"]


def test_folder_and_glob_write_what_single_predict_writes(small_engine_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--engine-dir", str(small_engine_dir), "--classes", ",".join(CLASSES), "--topk", "2"]
    rc = main(
        [
            *args,
            "--image",
            str(photos / "a"),
            str(photos / "b" / "*.png"),
            str(photos / "b" / "broken.jpg"),
            "--out-dir",
            str(out),
            "--save-npz",
            "--save-labels",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2  # one input failed: the run went on and says so at the end
    errors = [line for line in captured.err.splitlines() if line.startswith("sed-trt:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0], captured.err
    assert "6 segmented, 0 skipped, 1 failed" in captured.out
    for path in sorted(photos.rglob("*.png")):
        name = path.stem  # a directory's files keep their folder; a glob's are relative to its root
        rel = name if path.parent.name == "b" else name
        npz = np.load(out / f"{rel}.npz")
        np.testing.assert_array_equal(npz["labels"], _alone(small_engine_dir, path, tmp_path, topk=2))
        labels_png = np.asarray(Image.open(out / f"{rel}.labels.png"))
        np.testing.assert_array_equal(labels_png, npz["labels"])
        assert Image.open(out / f"{rel}.png").size[1] >= npz["labels"].shape[0]
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
    # --skip-existing resumes: nothing is segmented again
    rc = main(
        [
            *args,
            "--image",
            str(photos / "a"),
            "--out-dir",
            str(out),
            "--save-npz",
            "--save-labels",
            "--skip-existing",
            "--quiet",
        ]
    )
    assert rc == 0 and "0 segmented, 3 skipped, 0 failed" in capsys.readouterr().out


def test_a_directory_keeps_its_tree_and_outputs_are_checked_first(small_engine_dir, photos, tmp_path, capsys):
    out = tmp_path / "tree"
    base = ["predict", "--engine-dir", str(small_engine_dir), "--classes", "sky,tree", "--quiet"]
    assert main([*base, "--image", str(photos), "--out-dir", str(out)]) == 2  # broken.jpg
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a/p1.png",
        "a/p3.png",
        "a/p5.png",
        "b/p0.png",
        "b/p2.png",
        "b/p4.png",
    ]
    capsys.readouterr()
    for extra, message in (
        ([], "need --out-dir"),
        (["--out-dir", str(out), "--out", str(tmp_path / "x.png")], "--out names one file"),
    ):
        assert main([*base, "--image", str(photos / "a"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'a' / 'p1.png'}\n# a comment\n{photos / 'b' / 'p1.png'}\n")
    (photos / "b" / "p1.png").write_bytes((photos / "a" / "p1.png").read_bytes())
    try:
        assert main([*base, "--image", f"@{listing}", "--out-dir", str(out)]) == 2
        assert "would write the same outputs" in capsys.readouterr().err
    finally:
        (photos / "b" / "p1.png").unlink()


def test_a_video_gives_an_overlay_video_and_per_frame_labels(small_engine_dir, tmp_path):
    av = pytest.importorskip("av")
    src = tmp_path / "clip.mp4"
    rng = np.random.default_rng(1)
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(60):
            img = np.zeros((64, 96, 3), np.uint8)
            img[:, : (i + 10) % 96] = (200, 40, 30)
            img[32:] += rng.integers(0, 60, (32, 96, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
    out = tmp_path / "out"
    args = ["predict", "--engine-dir", str(small_engine_dir), "--classes", ",".join(CLASSES), "--topk", "2"]
    assert main([*args, "--image", str(src), "--out-dir", str(out), "--save-npz", "--quiet"]) == 0
    with av.open(str(out / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 24
        assert sum(1 for _ in container.decode(stream)) == 60
    arrays = np.load(out / "clip.npz")
    assert arrays["labels"].shape == (60, 64, 96) and list(arrays["frames"]) == list(range(60))
    with av.open(str(src)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    with sed_trt.Segmenter.from_engine_dir(small_engine_dir, topk=2) as seg:
        for i in (0, 17, 59):
            np.testing.assert_array_equal(arrays["labels"][i], seg.segment(frames[i], CLASSES).labels)
        got = list(seg.segment_video(src, CLASSES, stride=20))
    assert [(i, round(t, 3)) for i, t, _ in got] == [(0, 0.0), (20, round(20 / 24, 3)), (40, round(40 / 24, 3))]
    np.testing.assert_array_equal(got[1][2].labels, arrays["labels"][20])


def test_segment_many_equals_segment_and_yields_errors_in_place(small_engine_dir, photos):
    paths = sorted((photos / "a").glob("*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    with sed_trt.Segmenter.from_engine_dir(small_engine_dir, topk=2) as seg:
        alone = [seg.segment(a, CLASSES) for a in arrays]
        many = list(seg.segment_many([*paths, photos / "b" / "broken.jpg", arrays[0]], errors="yield", batch_size=4))
        with pytest.raises(sed_trt.ImageError, match="broken.jpg"):
            list(seg.segment_many([photos / "b" / "broken.jpg"]))
    assert isinstance(many[3], sed_trt.ImageError) and len(many) == 5
    for want, got in zip([*alone, alone[0]], [*many[:3], many[4]]):
        assert isinstance(got, sed_trt.Segmentation)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.kept, want.kept)


def test_ray_data_map_batches_equals_predict(small_engine_dir, tmp_path):
    """docs/bulk.md's Ray example, run as written (ENGINE_DIR: the small export) on a local Ray
    instance of 2 CPUs: every row's labels equal the photo segmented alone."""
    pytest.importorskip("ray")
    import re

    from tests.conftest import ROOT

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "bulk.md").read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "sed_trt.ray.Segment" in b)
    short = tempfile.mkdtemp(prefix="sedray", dir="/tmp")  # Ray's socket paths must stay short
    code = example.replace("ray.init(", f"ray.init(_temp_dir={short!r}, log_to_driver=False, ")
    code = code.replace("for row in ds.take_all():", "rows = ds.take_all()\nfor row in rows:")
    # rows come back in any order (Ray Data does not keep it): the example's id column says which photo
    code += "\nnp.savez(OUT, **{f'labels{r[\"id\"]}': r['labels'] for r in rows}, kept=np.stack([r['kept'] for r in sorted(rows, key=lambda r: r['id'])]))\n"
    out = tmp_path / "rows.npz"
    try:
        scope = {"ENGINE_DIR": str(small_engine_dir), "OUT": str(out)}
        exec(compile(code, "docs/bulk.md", "exec"), scope)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    rows = np.load(out)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(6)]
    with sed_trt.Segmenter.from_engine_dir(small_engine_dir, topk=2) as seg:
        for i, photo in enumerate(photos):
            want = seg.segment(photo, ["sky", "tree", "road"])
            np.testing.assert_array_equal(rows[f"labels{i}"], want.labels)
            np.testing.assert_array_equal(rows["kept"][i], want.kept)
