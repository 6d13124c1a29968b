"""Long videos clip by clip (MODEL.MASK_FORMER.TEST.CLIP_LENGTH / CLIP_OVERLAP): linking the
clips' queries into tracks, VideoMaskFormer.track_video, and the lazy VideoPrediction that the
VideoPredictor and the demo build on it."""

import json

import numpy as np
import pytest
import torch
from helpers import NARROW_HEADS, needs_cuda, write_clip
from test_video_e2e import CONFIG
from test_video_model import _frames, _model, assert_cuda_result_matches_the_cpu

from mask2former import VideoPredictor
from mask2former.modeling.meta_arch.video_clips import TrackLinker
from mask2former.utils.export import write_tracks
from mask2former.video_predictor import VideoPrediction

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- TrackLinker


def _clip(queries=5, frames=3, classes=4, seed=0, size=(6, 8)):
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(queries, classes + 1, generator=generator)
    mask_logits = 4 * torch.randn(queries, frames, *size, generator=generator)
    embeddings = torch.randn(queries, 16, generator=generator)
    return class_logits, mask_logits, embeddings


def test_linker_follows_queries_that_change_places():
    first = _clip(seed=0)
    permutation = torch.tensor([3, 0, 4, 1, 2])  # query j of clip 2 is query permutation[j]
    next_masks = _clip(seed=1)[1]
    next_masks[:, 0] = first[1][:, -1]  # the shared frame: the same masks
    second = (_clip(seed=2)[0][permutation], next_masks[permutation], first[2][permutation])
    linker = TrackLinker(torch.float32)
    linker.add(0, *first)
    linker.add(2, *second)
    assert linker.num_frames == 5 and linker.frame_counts == [1, 1, 2, 1, 1]
    order = linker.orders[1]
    assert torch.equal(permutation[order], torch.arange(5))  # track t continues with query t
    # class probabilities: the clips' mean, weighted by object probability x mask presence
    probabilities = [first[0].softmax(-1), second[0][order].softmax(-1)]
    presence = [first[1].flatten(1).amax(1), next_masks.flatten(1).amax(1)]
    weights = [(1 - p[:, -1]) * m.sigmoid() for p, m in zip(probabilities, presence)]
    expected = weights[0][:, None] * probabilities[0] + weights[1][:, None] * probabilities[1]
    expected = expected[:, :-1] / (weights[0] + weights[1])[:, None]
    torch.testing.assert_close(linker.class_probabilities(), expected)
    for track in range(5):
        logits = linker.track_logits(track)
        torch.testing.assert_close(logits[:3], first[1][track])
        torch.testing.assert_close(logits[3:], next_masks[track, 1:])


def test_linker_uses_the_masks_where_the_embeddings_say_nothing():
    first = _clip(seed=0)
    permutation = torch.tensor([1, 0, 2, 4, 3])
    masks = _clip(seed=3)[1]
    masks[:, :2] = first[1][:, 1:]  # two shared frames
    same = torch.ones(5, 16)
    linker = TrackLinker()
    linker.add(0, first[0], first[1], same)
    linker.add(1, first[0][permutation], masks[permutation], same)
    assert torch.equal(permutation[linker.orders[1]], torch.arange(5))


def test_linker_uses_the_embeddings_without_shared_frames():
    first = _clip(seed=0)
    permutation = torch.tensor([2, 3, 4, 0, 1])
    second = _clip(seed=4)
    linker = TrackLinker()
    linker.add(0, *first)
    linker.add(3, second[0], second[1], first[2][permutation] + 0.01 * second[2])
    assert torch.equal(permutation[linker.orders[1]], torch.arange(5))
    assert linker.frame_counts == [1] * 6


def test_a_clip_where_a_track_is_out_of_view_keeps_its_score():
    # the whole video at once scores a track by the frames where its object is; in clips, a
    # clip where the query says "no object" with an empty mask must not halve the score
    class_logits, mask_logits, embeddings = _clip(queries=2, classes=3)
    class_logits[0] = torch.tensor([8.0, 0, 0, 0])  # track 0: class 0, sure
    absent_logits = class_logits.clone()
    absent_logits[0] = torch.tensor([0.0, 0, 0, 8])  # "no object" in the next clip
    absent_masks = mask_logits.clone()
    absent_masks[0] = -10  # and an empty mask
    linker = TrackLinker()
    linker.add(0, class_logits, mask_logits, embeddings)
    linker.add(3, absent_logits, absent_masks, embeddings)
    sure = class_logits[0].softmax(-1)[0]
    assert linker.class_probabilities()[0, 0] > sure - 1e-3  # the plain mean: about 1/2


def test_linker_refuses_gaps_and_other_query_counts():
    linker = TrackLinker()
    with pytest.raises(ValueError, match="without a gap"):
        linker.add(1, *_clip())
    linker.add(0, *_clip())
    with pytest.raises(ValueError, match="without a gap"):
        linker.add(4, *_clip())
    with pytest.raises(ValueError, match="6 queries after clips with 5"):
        linker.add(3, *_clip(queries=6))


def test_linker_keeps_one_clip_in_float32_and_more_in_float16_bounded():
    class_logits, mask_logits, embeddings = _clip()
    mask_logits[0, 0, 0, 0] = 1e6  # beyond float16: kept as a large finite logit
    linker = TrackLinker()
    linker.add(0, class_logits, mask_logits, embeddings)
    assert linker.track_logits(0).dtype == torch.float32  # as the whole video's logits
    linker.add(3, class_logits, mask_logits, embeddings)
    stored = linker.track_logits(0)
    assert stored.dtype == torch.float16 and torch.isfinite(stored).all()
    assert stored[0, 0, 0] > 1000 and stored.shape == (6, 6, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linker_under_autocast_links_as_in_float32(dtype):
    # the model's outputs come in half precision under autocast, and the caller's autocast is on
    first, second = _clip(seed=0), _clip(seed=1)
    permutation = torch.tensor([4, 2, 0, 1, 3])
    second = (second[0][permutation], second[1][permutation], first[2][permutation])
    second[1][:, 0] = first[1][permutation, -1]
    reference = TrackLinker()
    reference.add(0, *first)
    reference.add(2, *second)
    linker = TrackLinker()
    with torch.autocast("cpu", dtype=dtype):
        linker.add(0, *(x.to(dtype) for x in first))
        linker.add(2, *(x.to(dtype) for x in second))
    assert torch.equal(linker.orders[1], reference.orders[1])
    assert linker.class_probabilities().dtype == torch.float32
    torch.testing.assert_close(
        linker.class_probabilities(), reference.class_probabilities(), atol=0.02, rtol=0
    )


# ---------------------------------------------------------------- VideoMaskFormer


def _decoder_frames(model):
    """The number of frames of each transformer decoder call, and of each backbone call."""
    decoder, backbone = [], []
    model.sem_seg_head.predictor.register_forward_hook(
        lambda module, args, out: decoder.append(len(args[1]))
    )
    model.backbone.register_forward_hook(lambda module, args, out: backbone.append(len(args[0])))
    return decoder, backbone


def test_track_video_of_one_clip_is_the_whole_video_result():
    model, _ = _model()
    model.eval()
    frames = _frames(5, 40, 56, seed=3)
    with torch.no_grad():
        (expected,) = model([{"image": frames, "height": 61, "width": 83}])
        tracks = model.track_video(iter(frames), (61, 83))  # CLIP_LENGTH 0: one clip
        result = model.tracks_result(tracks)
        model.clip_length = 5  # one clip of the clip path
        clip_result = model.tracks_result(model.track_video(frames, (61, 83)))
    assert result["pred_scores"] == expected["pred_scores"]
    assert result["pred_labels"] == expected["pred_labels"]
    for mask, expected_mask in zip(result["pred_masks"], expected["pred_masks"]):
        assert torch.equal(mask, expected_mask)
    # one clip keeps float32 logits: a video that fits one clip gets the whole-video result
    assert clip_result["pred_scores"] == expected["pred_scores"]
    assert clip_result["pred_labels"] == expected["pred_labels"]
    for mask, expected_mask in zip(clip_result["pred_masks"], expected["pred_masks"]):
        assert torch.equal(mask, expected_mask)


@pytest.mark.parametrize(
    "length, overlap, num_frames, clips",
    [
        (3, 1, 7, [3, 3, 3]),
        (3, 1, 8, [3, 3, 3, 2]),  # the last clip: the shared frame and what is left
        (3, 1, 3, [3]),  # no longer than a clip: the whole video at once
        (3, 1, 2, [2]),
        (1, 0, 3, [1, 1, 1]),  # frame by frame
        (4, 2, 7, [4, 4, 3]),
        (3, 2, 6, [3, 3, 3, 3]),  # every clip shares all but one frame with the one before
    ],
)
def test_clips_share_frames_that_the_backbone_sees_once(length, overlap, num_frames, clips):
    model, cfg = _model(
        **{
            "MODEL.MASK_FORMER.TEST.CLIP_LENGTH": length,
            "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP": overlap,
            "MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS": 2,
        }
    )
    model.eval()
    decoder, backbone = _decoder_frames(model)
    with torch.no_grad():
        (result,) = model([{"image": _frames(num_frames, 40, 56), "height": 50, "width": 70}])
    assert decoder == clips
    assert sum(backbone) == num_frames and max(backbone) <= 2  # FRAMES_PER_PASS
    limit = cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO
    assert 0 < len(result["pred_scores"]) <= limit
    assert result["pred_scores"] == sorted(result["pred_scores"], reverse=True)
    for mask in result["pred_masks"]:
        assert mask.shape == (num_frames, 50, 70) and mask.dtype == torch.bool


def test_clips_under_bfloat16_autocast_on_the_cpu():
    model, _ = _model(
        **{"MODEL.MASK_FORMER.TEST.CLIP_LENGTH": 3, "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP": 1}
    )
    model.eval()
    video = {"image": _frames(7, 40, 56, seed=6)}
    with torch.no_grad():
        (expected,) = model([video])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (result,) = model([video])
    assert all(mask.shape == (7, 40, 56) for mask in result["pred_masks"])
    scores, expected_scores = (torch.tensor(r["pred_scores"]) for r in (result, expected))
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=0.05)


def test_a_still_video_keeps_each_query_on_its_track():
    # every clip sees the same frames, so each query must continue its own track
    model, _ = _model(
        **{"MODEL.MASK_FORMER.TEST.CLIP_LENGTH": 2, "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP": 0}
    )
    model.eval()
    frame = _frames(1, 40, 56, seed=5)[0]
    seen = []
    original = TrackLinker.add

    def spy(linker, *args):
        original(linker, *args)
        seen.append(linker)

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrackLinker, "add", spy)
        model.track_video([frame] * 6)
    linker = seen[-1]
    assert len(linker.orders) == 3
    for order in linker.orders:
        assert torch.equal(order, torch.arange(len(order)))


@pytest.mark.parametrize("length, overlap", [(-1, 0), (3, 3), (3, -1)])
def test_clip_settings_are_checked(length, overlap):
    with pytest.raises(ValueError, match="CLIP_LENGTH must be >= 0 .* CLIP_OVERLAP in"):
        _model(
            **{
                "MODEL.MASK_FORMER.TEST.CLIP_LENGTH": length,
                "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP": overlap,
            }
        )


def test_track_video_refuses_an_empty_video_and_frames_of_two_sizes():
    model, _ = _model(**{"MODEL.MASK_FORMER.TEST.CLIP_LENGTH": 2})
    model.eval()
    with pytest.raises(ValueError, match="no frames"):
        model.track_video([])
    with pytest.raises(ValueError, match="share a size"):
        model.track_video(_frames(2, 40, 56) + _frames(1, 48, 64))


# ---------------------------------------------------------------- VideoPredictor, demo


@pytest.fixture(scope="module")
def clip_predictor():
    opts = [
        "MODEL.DEVICE",
        "cpu",
        *NARROW_HEADS,
        "MODEL.MASK_FORMER.TEST.CLIP_LENGTH",
        "3",
        "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP",
        "1",
    ]
    return VideoPredictor(CONFIG, "", opts=opts)


def test_predictor_reads_frames_as_they_come_and_makes_masks_on_demand(clip_predictor):
    rng = np.random.default_rng(0)
    clips_run = []  # how many clips the decoder had run when each frame was read
    decoder = clip_predictor.model.sem_seg_head.predictor
    handle = decoder.register_forward_hook(lambda *args: clips_run.append(None))
    read_after = []

    def frames():
        for _ in range(7):
            read_after.append(len(clips_run))
            yield rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)

    try:
        prediction = clip_predictor.predict_arrays(frames())
    finally:
        handle.remove()
    # clips of 3 sharing 1 frame: frames 0-2, 2-4, 4-6; each read once the clip before ran
    assert read_after == [0, 0, 0, 1, 1, 2, 2] and len(clips_run) == 3
    assert prediction.num_frames == 7
    assert prediction.frame_size == (40, 60) and len(prediction) > 0
    masks = prediction.masks
    assert masks.shape == (len(prediction), 7, 40, 60) and masks.dtype == bool
    for index in (0, 3, 6):
        np.testing.assert_array_equal(prediction.frame(index).instances.masks, masks[:, index])
    np.testing.assert_array_equal(prediction.track_masks(1, 2, 5), masks[1, 2:5])
    kept = prediction.filter(float(prediction.scores[1]))
    assert len(kept) == 2
    np.testing.assert_array_equal(kept.masks, masks[:2])


def test_lazy_and_dense_predictions_write_the_same_tracks(clip_predictor, tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(5)]
    lazy = clip_predictor(frames)
    dense = VideoPrediction(
        lazy.frame_size, lazy.masks, lazy.scores, lazy.classes, lazy.class_names
    )
    write_tracks(lazy, str(tmp_path / "lazy.json"), video_id=1)
    write_tracks(dense, str(tmp_path / "dense.json"), video_id=1)
    assert (tmp_path / "lazy.json").read_text() == (tmp_path / "dense.json").read_text()
    with pytest.raises(ValueError, match="masks or tracks"):
        VideoPrediction(lazy.frame_size, None, lazy.scores, lazy.classes, lazy.class_names)


def test_demo_runs_a_video_file_in_clips(tmp_path, capsys):
    from test_video_e2e import demo

    clip = write_clip(tmp_path / "clip.mp4", frames=7, fps=5.0, size=(48, 32))
    argv = ["--config-file", CONFIG, "--confidence-threshold", "0", "--video-input", clip]
    argv += ["--output", str(tmp_path / "out"), "--opts", "MODEL.DEVICE", "cpu", *NARROW_HEADS]
    argv += ["MODEL.MASK_FORMER.TEST.CLIP_LENGTH", "3"]
    assert demo.main(argv) == 0
    capsys.readouterr()
    tracks = json.loads((tmp_path / "out" / "clip.tracks.json").read_text())
    assert tracks and all(len(track["segmentations"]) == 7 for track in tracks)


def test_demo_suggests_clips_for_a_long_video(tmp_path, capsys, caplog, monkeypatch):
    from test_video_e2e import demo

    from mask2former.apps import cli

    monkeypatch.setattr(cli, "LONG_VIDEO_FRAMES", 4)
    clip = write_clip(tmp_path / "clip.mp4", frames=5, fps=5.0, size=(48, 32))
    inputs = ["--config-file", CONFIG, "--video-input", clip, "--output", str(tmp_path / "out")]
    opts = ["--opts", "MODEL.DEVICE", "cpu", *NARROW_HEADS]
    with caplog.at_level("WARNING", logger="mask2former.apps.cli"):
        assert demo.main(inputs + opts) == 0
        assert "its 5 frames at once" in caplog.text
        assert "MODEL.MASK_FORMER.TEST.CLIP_LENGTH 36" in caplog.text
        caplog.clear()
        assert demo.main(inputs + opts + ["MODEL.MASK_FORMER.TEST.CLIP_LENGTH", "2"]) == 0
        assert demo.main(inputs + ["--max-frames", "4"] + opts) == 0  # 4 frames: not long
        assert "CLIP_LENGTH 36" not in caplog.text
    capsys.readouterr()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16])
def test_cuda_clips_match_the_cpu(precision):
    model, _ = _model(
        **{"MODEL.MASK_FORMER.TEST.CLIP_LENGTH": 3, "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP": 1}
    )
    assert_cuda_result_matches_the_cpu(model, _frames(7, 48, 64, seed=4), precision)
