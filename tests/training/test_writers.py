"""Metric writers: TensorBoard event files round-trip through our reader (CRC-checked), JSONL truncation, PNG grid."""
import io
import struct

import numpy as np
import pytest
from PIL import Image

from lgmsnet_jax.training import writers
from lgmsnet_jax.training.writers import tensorboard


def test_crc32c_matches_the_standard_check_value():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # RFC 3720 CRC-32C check value
    assert tensorboard.crc32c(b"") == 0


def test_event_file_round_trips_scalars_and_images(tmp_path):
    w = writers.EventWriter(tmp_path)
    w.scalars(3, {"train/loss": 0.25, "train/lr": 1e-3})
    png = writers.encode_png(np.zeros((4, 6, 3), np.uint8))
    w.image(7, "val/predictions", png, 4, 6)
    w.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    events = writers.read_events(path)
    assert events[0]["file_version"] == "brain.Event:2"
    assert events[1]["step"] == 3 and events[1]["scalars"] == {"train/loss": 0.25, "train/lr": pytest.approx(1e-3)}
    img = events[2]["images"]["val/predictions"]
    assert events[2]["step"] == 7 and (img["height"], img["width"], img["colorspace"]) == (4, 6, 3)
    assert img["png"] == png


def test_corrupted_event_file_is_detected(tmp_path):
    w = writers.EventWriter(tmp_path)
    w.scalars(1, {"x": 1.0})
    w.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # flip a payload byte of the last record
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad payload CRC"):
        writers.read_events(path)


def test_record_framing_uses_masked_crc_of_the_length():
    rec = tensorboard._record(b"abc")
    (n,) = struct.unpack("<Q", rec[:8])
    assert n == 3 and struct.unpack("<I", rec[8:12])[0] == tensorboard.masked_crc32c(rec[:8])


def test_jsonl_truncate_after_drops_replayed_steps(tmp_path):
    w = writers.JsonlWriter(tmp_path / "m.jsonl")
    for s in range(1, 6):
        w.write(s, {"loss": float(s), "bad": float("nan")})
    assert w.truncate_after(3) == 2
    recs = writers.read_jsonl(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[0]["bad"] is None


def test_prediction_grid_places_input_truth_prediction_overlay():
    img = np.full((2, 4, 4, 3), 100, np.uint8)
    gt = np.zeros((2, 4, 4, 1), np.float32)
    gt[:, :2] = 1
    probs = np.zeros((2, 4, 4, 1), np.float32)
    probs[:, :, :2] = 0.9
    grid = writers.prediction_grid(img, gt, probs)
    assert grid.shape == (2 * 4 + 2, 4 * 4 + 3 * 2, 3)
    assert (grid[0, 6] == 255).all() and (grid[3, 6] == 0).all()  # ground truth tile: top half white
    overlay = grid[:4, 18:22]
    assert tuple(overlay[0, 0]) == (255, 220, 0) and tuple(overlay[0, 3]) == (30, 200, 30)  # TP, FN
    assert tuple(overlay[3, 0]) == (230, 30, 30)  # FP
    decoded = np.asarray(Image.open(io.BytesIO(writers.encode_png(grid))))
    np.testing.assert_array_equal(decoded, grid)
