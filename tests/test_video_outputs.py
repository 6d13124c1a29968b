"""The pieces around a video model that need no model: VideoPrediction, the YouTube-VIS
results file of a clip (write_tracks), track drawing, reading video files, and how bad-sample
reports and exclude files name a video."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data.catalog import Metadata

from mask2former.data.bad_samples import BadSample
from mask2former.data.exclude import exclude_images
from mask2former.data.records import (
    is_video_record,
    record_id,
    record_path,
    video_has_annotations,
)
from mask2former.utils.export import write_tracks
from mask2former.utils.image_io import ImageReadError
from mask2former.utils.video_io import VideoReadError, read_video
from mask2former.utils.visualization import display_metadata, draw_tracks
from mask2former.video_predictor import VideoPrediction


def _prediction(scale=1):
    """Three tracks over four 24 x 32 frames (times ``scale``); track 1 is absent from frames 2
    and 3."""
    masks = np.zeros((3, 4, 24, 32), dtype=bool)
    masks[0, :, 2:10, 3:12] = True
    masks[1, :2, 12:20, 15:30] = True
    masks[2, 1:, 5:8, 20:31] = True
    masks = masks.repeat(scale, axis=2).repeat(scale, axis=3)
    return VideoPrediction(
        frame_size=(24 * scale, 32 * scale),
        masks=masks,
        scores=np.array([0.9, 0.6, 0.3], dtype=np.float32),
        classes=np.array([1, 0, 1]),
        class_names=["cat", "dog", "cat"],
    )


def test_frame_keeps_every_track_in_order_with_tight_boxes():
    prediction = _prediction()
    frame = prediction.frame(2)
    assert frame.image_size == (24, 32)
    instances = frame.instances
    assert len(instances) == 3 and instances.class_names == ["cat", "dog", "cat"]
    np.testing.assert_array_equal(instances.masks, prediction.masks[:, 2])
    np.testing.assert_array_equal(instances.boxes[0], [3, 2, 12, 10])
    np.testing.assert_array_equal(instances.boxes[1], [0, 0, 0, 0])  # absent from frame 2


def test_filter_drops_low_scores():
    kept = _prediction().filter(0.5)
    assert len(kept) == 2 and kept.class_names == ["cat", "dog"]
    assert kept.masks.shape == (2, 4, 24, 32)


def test_write_tracks_is_youtube_vis_results(tmp_path):
    prediction = _prediction()
    metadata = Metadata(thing_dataset_id_to_contiguous_id={7: 0, 9: 1})
    path = tmp_path / "tracks.json"
    write_tracks(prediction, str(path), video_id=5, metadata=metadata)
    entries = json.loads(path.read_text())
    assert [e["category_id"] for e in entries] == [9, 7, 9]
    assert [e["video_id"] for e in entries] == [5, 5, 5]
    np.testing.assert_allclose([e["score"] for e in entries], [0.9, 0.6, 0.3], rtol=1e-6)
    for track, entry in enumerate(entries):
        assert len(entry["segmentations"]) == 4
        for frame, rle in enumerate(entry["segmentations"]):
            expected = prediction.masks[track, frame]
            if not expected.any():
                assert rle is None
                continue
            decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            np.testing.assert_array_equal(decoded.astype(bool), expected)


def test_draw_tracks_gives_a_track_the_same_colour_in_every_frame():
    prediction = _prediction(scale=8)
    metadata = display_metadata(Metadata(thing_classes=["dog", "cat"]), 2)
    frame = np.full((192, 256, 3), 128, dtype=np.uint8)
    pictures = [draw_tracks(frame, prediction.frame(t), metadata) for t in range(4)]
    assert all(p.shape == frame.shape for p in pictures)
    inside = (30, 30)  # inside track 0 in every frame, away from its outline and label
    colours = {tuple(p[inside]) for p in pictures}
    assert len(colours) == 1 and colours != {(128, 128, 128)}
    # track 1 is drawn where it is present (frame 0), not where it is absent (frame 3)
    inside_track_1 = (140, 140)
    assert tuple(pictures[0][inside_track_1]) != (128, 128, 128)
    assert tuple(pictures[3][inside_track_1]) == (128, 128, 128)


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_read_video_in_rgb_with_a_cap(tmp_path):
    path = tmp_path / "clip.avi"
    red_bgr = np.zeros((24, 32, 3), np.uint8)
    red_bgr[..., 2] = 255
    _write_video(path, [red_bgr] * 5)
    clip = read_video(str(path), "RGB", max_frames=3)
    assert clip.cut_short and clip.fps == pytest.approx(5.0)
    frames = clip.frames
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3)
    assert frames[0][..., 0].mean() > 200 and frames[0][..., 2].mean() < 50  # red first in RGB


def test_read_video_errors_name_the_file(tmp_path):
    with pytest.raises(VideoReadError, match="gone.mp4: no such video file"):
        read_video(str(tmp_path / "gone.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ImageReadError, match="broken.mp4: cannot open the video"):
        read_video(str(broken))


VIDEO = {
    "video_id": 12,
    "file_names": ["/data/JPEGImages/abc/00000.jpg", "/data/JPEGImages/abc/00005.jpg"],
    "annotations": [[], [{"id": 1, "category_id": 0, "iscrowd": 0}]],
}


def test_a_video_record_is_named_by_its_frame_folder_and_video_id():
    assert is_video_record(VIDEO) and not is_video_record({"file_name": "a.jpg", "image_id": 3})
    assert record_path(VIDEO) == "/data/JPEGImages/abc" and record_id(VIDEO) == 12
    bad = BadSample.from_error(VIDEO, OSError("/data/JPEGImages/abc/00005.jpg is truncated"))
    assert bad.file_name == "/data/JPEGImages/abc" and bad.image_id == 12
    assert "00005.jpg is truncated" in bad.reason


def test_exclude_file_entries_match_videos_by_id_or_folder():
    other = {**VIDEO, "video_id": 13, "file_names": ["/data/JPEGImages/xyz/00000.jpg"]}
    kept, unmatched = exclude_images([VIDEO, other], {"abc", "99"})
    assert kept == [other] and unmatched == {"99"}
    kept, _ = exclude_images([VIDEO, other], {"13"})
    assert kept == [VIDEO]


def test_video_has_annotations_ignores_crowds_and_empty_frames():
    assert video_has_annotations(VIDEO)
    crowd = {**VIDEO, "annotations": [[], [{"id": 1, "category_id": 0, "iscrowd": 1}]]}
    assert not video_has_annotations(crowd)
    assert not video_has_annotations({**VIDEO, "annotations": [[], []]})
    assert not video_has_annotations({"video_id": 1, "file_names": []})
