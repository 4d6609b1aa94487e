"""What users upload, made here with Pillow: the served tensor equals torchvision's eval pipeline
(written below from its formulas) for photos of any size, upright by EXIF; trailing bytes are
fine and truncation is not; formats we do not serve are 415 with a clean message; bombs are
refused from the header; every Pillow mode becomes the RGB we state; one bad image fails alone."""

from __future__ import annotations

import io
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import model_store.worker.classifier as classifier_module
from bench.hostile import png_text_bomb, scan_bomb
from contract.images import (
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    MAX_PNG_METADATA_CHUNKS,
    ImageError,
    ImageLimits,
    check_complete,
    validate,
)
from contract.protocol import IMAGENET_MEAN, IMAGENET_STD
from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.demo.tiny import save_tiny
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig
from model_store.worker.images import load_upright_rgb, to_rgb
from model_store.worker.inputs import tensor_input
from model_store.worker.transforms import images_to_batch
from model_store.zoo.models import create_model, tiny_arch

from ...checks import INTERNALS

LIMITS = ImageLimits()
ORIENTATION = 0x0112


def torchvision_eval(image: Image.Image, crop: int = 224, resize: int = 256) -> torch.Tensor:
    """Resize(resize) + CenterCrop(crop) + ToTensor + Normalize, from torchvision's own formulas
    (``_compute_resized_output_size``, ``center_crop``, ``to_tensor``, ``normalize``)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - crop) / 2.0))  # noqa: RUF046 -- torchvision's own expression
    left = int(round((new_w - crop) / 2.0))  # noqa: RUF046
    image = image.crop((left, top, left + crop, top + crop))
    tensor = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    tensor = tensor.to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: resize and crop offsets show in every pixel."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([x * 255, y * 255, (1 - x) * y * 255], axis=-1)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def tiny_weights(directory: Path) -> Path:
    """An untrained tiny model: these tests compare pixels and scores, not accuracy."""
    torch.manual_seed(0)
    model = create_model("eca_resnet50", num_classes=len(CLASS_NAMES), **tiny_arch("eca_resnet50"))
    return save_tiny(model.eval(), directory / "eca.pt")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def classifier(weights) -> ImageClassifier:
    return ImageClassifier.load(ClassifierConfig("eca_resnet50", weights, compile=False))


def served_batch(classifier: ImageClassifier, images: list[bytes], monkeypatch) -> torch.Tensor:
    """The tensor the classifier really feeds its model for these uploads."""
    seen = []
    original = classifier.predict
    monkeypatch.setattr(classifier, "predict", lambda batch: seen.append(batch) or original(batch))
    results = classifier.classify(images)
    assert all("predictions" in r for r in results), results
    return seen[0]


# Sizes where truncating the long side and rounding the crop offset half-to-even both matter.
SIZES = [(301, 257), (257, 301), (640, 480), (333, 199), (97, 131), (64, 64), (2016, 1512)]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_served_tensor_equals_torchvision_eval_pipeline(classifier, monkeypatch, fmt):
    uploads = [encode(photo(size, seed), fmt) for seed, size in enumerate(SIZES)]
    batch = served_batch(classifier, uploads, monkeypatch)
    size = classifier.input_size
    for data, served in zip(uploads, batch, strict=True):
        decoded = Image.open(io.BytesIO(data)).convert("RGB")  # full decode, no draft
        expected = torchvision_eval(decoded, size, int(size / 0.875))
        torch.testing.assert_close(served, expected, rtol=0, atol=0)


def test_224_crop_of_the_reference_pipeline():
    """The classic ImageNet numbers: 256 then 224, offsets rounded half to even."""
    from model_store.worker.transforms import center_crop_box, resized_size

    for w, h in [(301, 257), (500, 375), (1000, 999), (259, 1000)]:
        image = photo((w, h))
        served = torch.from_numpy(
            np.asarray(
                image.resize(resized_size(w, h, 256), Image.Resampling.BILINEAR).crop(
                    center_crop_box(*resized_size(w, h, 256), 224)
                )
            ).copy()
        )
        expected = torchvision_eval(image)
        got = served.permute(2, 0, 1).float().div(255)
        mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
        torch.testing.assert_close(got.sub(mean).div(std), expected, rtol=0, atol=0)
    assert resized_size(301, 257, 256) == (299, 256)  # int(299.82), not round()
    assert center_crop_box(299, 256, 224) == (38, 16, 262, 240)  # round(37.5) == 38
    assert center_crop_box(261, 256, 224) == (18, 16, 242, 240)  # round(18.5) == 18


def test_scores_equal_the_offline_model_on_the_reference_tensor(classifier):
    images, _ = make_images(6, seed=3, size=(150, 97))
    uploads = [encode(image, "PNG") for image in images]
    served = classifier.classify(uploads, top_k=4)
    size = classifier.input_size
    reference = torch.stack([torchvision_eval(im, size, int(size / 0.875)) for im in images])
    with torch.no_grad():
        offline = classifier.runner(reference.contiguous()).softmax(dim=1)
    for result, row in zip(served, offline, strict=True):
        scores = {p["index"]: p["score"] for p in result["predictions"]}
        for index, score in scores.items():
            assert score == pytest.approx(row[index].item(), abs=1e-6)


def with_orientation(upright: Image.Image, orientation: int, fmt: str) -> bytes:
    """Stored the way a phone stores it: pixels rotated, an EXIF tag saying how to show them."""
    undo = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(upright.transpose(undo[orientation]), fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_before_resizing(classifier, monkeypatch, orientation, fmt):
    upright = photo((200, 120), seed=orientation)
    data = with_orientation(upright, orientation, fmt)
    [served] = served_batch(classifier, [data], monkeypatch)
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert shown.size == upright.size  # what a browser shows
    size = classifier.input_size
    torch.testing.assert_close(served, torchvision_eval(shown, size, int(size / 0.875)))
    if fmt == "PNG":  # lossless: the served tensor is the upright photo's
        torch.testing.assert_close(served, torchvision_eval(upright, size, int(size / 0.875)))


def test_fast_decode_is_opt_in_and_changes_pixels(weights, monkeypatch):
    exact = ImageClassifier.load(ClassifierConfig("eca_resnet50", weights, compile=False))
    fast = ImageClassifier.load(
        ClassifierConfig("eca_resnet50", weights, compile=False, fast_decode=True)
    )
    assert exact.config.fast_decode is False
    data = encode(photo((1600, 1200)), "JPEG", quality=90)
    exact_batch = served_batch(exact, [data], monkeypatch)
    monkeypatch.undo()
    fast_batch = served_batch(fast, [data], monkeypatch)
    reference = torchvision_eval(Image.open(io.BytesIO(data)).convert("RGB"), 64, 73)
    torch.testing.assert_close(exact_batch[0], reference, rtol=0, atol=0)
    assert not torch.equal(fast_batch[0], reference)


def jpeg_with_thumbnail_segment(data: bytes) -> bytes:
    """An APP1 segment holding a whole little JPEG (as EXIF thumbnails do) after the JFIF APP0
    segment, where cameras put it."""
    thumbnail = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "JPEG")
    payload = b"Exif\x00\x00" + thumbnail
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:app0_end] + app1 + data[app0_end:]


TRAILER = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16 + b"\xff\xd9 motion photo"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_trailing_bytes_are_a_valid_image_and_truncation_is_not(classifier, fmt):
    clean = encode(photo((120, 90)), fmt)
    with_trailer = clean + TRAILER
    validate(with_trailer, LIMITS)
    [served, plain] = classifier.classify([with_trailer, clean])
    assert served == plain
    for cut in (len(clean) // 2, len(clean) - 3):
        with pytest.raises(ImageError) as refused:
            validate(clean[:cut], LIMITS)
        assert refused.value.code == "undecodable_image" and "truncated" in str(refused.value)


def test_a_thumbnails_end_marker_does_not_hide_a_truncated_scan():
    data = jpeg_with_thumbnail_segment(encode(photo((64, 48)), "JPEG"))
    validate(data, LIMITS)
    with pytest.raises(ImageError, match="truncated"):
        check_complete("JPEG", data[: len(data) - 200])


def test_a_multi_picture_jpeg_serves_its_first_picture(classifier):
    """MPO (Ultra HDR gain maps of current phones, stereo cameras): the primary picture is
    served; the pictures after it are bytes after its end."""
    primary, second = photo((120, 90), seed=1), photo((120, 90), seed=2)
    buffer = io.BytesIO()
    primary.save(buffer, "MPO", save_all=True, append_images=[second], quality=95)
    multi = buffer.getvalue()
    assert Image.open(io.BytesIO(multi)).n_frames == 2
    validate(multi, LIMITS)
    alone = io.BytesIO()
    primary.save(alone, "JPEG", quality=95)
    assert classifier.classify([multi]) == classifier.classify([alone.getvalue()])


def with_empty_segments(data: bytes, count: int) -> bytes:
    """A JPEG with ``count`` empty comment segments after its SOI marker."""
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def with_empty_chunks(data: bytes, count: int) -> bytes:
    """A PNG with ``count`` empty private chunks before IEND (past what Pillow's header read
    looks at)."""
    chunk = b"\x00\x00\x00\x00abCd" + zlib.crc32(b"abCd").to_bytes(4, "big")
    return data[:-12] + chunk * count + data[-12:]


@pytest.mark.parametrize(
    ("fmt", "padded", "limit"),
    [("JPEG", with_empty_segments, MAX_JPEG_SEGMENTS), ("PNG", with_empty_chunks, MAX_PNG_CHUNKS)],
)
def test_the_structure_walk_is_bounded(fmt, padded, limit):
    """A valid file of millions of empty segments or chunks took seconds to walk on the event
    loop; past what real images hold, it is refused without walking on."""
    clean = encode(photo((64, 48)), fmt)
    validate(padded(clean, limit - 20), LIMITS)
    with pytest.raises(ImageError) as refused:
        validate(padded(clean, 100 * limit), LIMITS)
    assert refused.value.code == "undecodable_image" and f"more than {limit}" in str(refused.value)


def test_a_progressive_jpeg_of_too_many_scans_is_refused_and_fails_alone(classifier):
    """Every scan costs libjpeg a pass over the whole picture: a 36 MP file of 20,000 repeated
    scans decoded for minutes and held its batch past the worker's timeout. The walk counts
    scans to EOI; an ordinary progressive photo (10 scans) and one of 90 are served."""
    progressive = scan_bomb(side=480, repeats=0)
    many = scan_bomb(side=480, repeats=MAX_JPEG_SCANS - 10)
    bomb = scan_bomb(side=480, repeats=MAX_JPEG_SCANS)
    for served in (progressive, many):
        validate(served, LIMITS)
    with pytest.raises(ImageError) as refused:
        validate(bomb, LIMITS)
    assert refused.value.code == "image_too_large"
    assert f"more than {MAX_JPEG_SCANS} scans" in str(refused.value)
    good, refused_bomb, served_many = classifier.classify([progressive, bomb, many])
    assert "predictions" in good and "predictions" in served_many
    assert refused_bomb["error"]["code"] == "image_too_large"


def with_icc_profiles(count: int) -> bytes:
    """A PNG with ``count`` iCCP chunks (the spec allows one)."""
    data = encode(Image.new("RGB", (32, 32)), "PNG", icc_profile=bytes(4096))
    start = data.index(b"iCCP") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    return data[:end] + data[start:end] * (count - 1) + data[end:]


def test_png_metadata_that_inflates_is_bounded_in_both_tiers(classifier):
    """zTXt, iTXt and iCCP chunks are inflated by ``Image.open`` (1 MiB each, 64 MiB in all by
    Pillow's defaults): 63 chunks of 1 KB cost 64 MB and 0.2 s per image, checked once by the
    gateway and again by the worker. Past a few per kind the walk refuses; what the chunks
    allowed may inflate to is bounded (``MAX_PNG_TEXT_BYTES``) wherever ``contract.images`` is
    imported."""
    limit = MAX_PNG_METADATA_CHUNKS[b"zTXt"]
    validate(png_text_bomb(chunks=3), LIMITS)
    validate(with_icc_profiles(1), LIMITS)
    for bomb, reason in [
        (png_text_bomb(chunks=63), f"more than {limit} zTXt"),
        (with_icc_profiles(2), "more than 1 iCCP"),
        (png_text_bomb(chunks=limit), "not a valid PNG file"),  # 16 MiB of text, 4 allowed
    ]:
        with pytest.raises(ImageError) as refused:
            validate(bomb, LIMITS)
        assert refused.value.code == "undecodable_image" and reason in str(refused.value)
    served, refused_bomb = classifier.classify([png_text_bomb(chunks=3), png_text_bomb()])
    assert "predictions" in served and refused_bomb["error"]["code"] == "undecodable_image"


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


UNSERVED = {
    "GIF": encode(Image.new("P", (8, 8)), "GIF"),
    "animated GIF": animated("GIF"),
    "multi-frame TIFF": animated("TIFF"),
    "BMP": encode(Image.new("RGB", (8, 8)), "BMP"),
    "HEIC": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    "animated PNG": animated("PNG"),
    "animated WEBP": animated("WEBP"),
}


@pytest.mark.parametrize("name", UNSERVED)
def test_unserved_formats_are_415_naming_what_is_served(name):
    with pytest.raises(ImageError) as refused:
        validate(UNSERVED[name], LIMITS)
    assert refused.value.code == "unsupported_image_type"
    message = str(refused.value)
    assert "JPEG, PNG, WEBP" in message and not INTERNALS.search(message)


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n garbage", b"\xff\xd8\xff\xe0 junk", b"hello", b"RIFF\0\0\0\0WEBP"]
)
def test_garbage_is_400_without_internals(data):
    with pytest.raises(ImageError) as refused:
        validate(data, LIMITS)
    assert refused.value.code == "undecodable_image"
    assert not INTERNALS.search(str(refused.value))


def test_aspect_ratio_bomb_is_refused_from_the_header(classifier):
    bomb = encode(Image.new("L", (39000, 1)), "PNG")
    assert len(bomb) < 400
    with pytest.raises(ImageError) as refused:
        validate(bomb, LIMITS)
    assert refused.value.code == "image_too_large" and "aspect ratio" in str(refused.value)
    validate(encode(Image.new("L", (3200, 100)), "PNG"), LIMITS)  # 32:1 is still served
    [result] = classifier.classify([bomb])
    assert result["error"]["code"] == "image_too_large"


def test_pixel_limit_is_ours_not_pillows():
    """Below Pillow's own bomb threshold (89 M), above ours: our check is what refuses it."""
    wide = encode(Image.new("1", (6000, 6000)), "PNG")
    validate(wide, LIMITS)
    with pytest.raises(ImageError) as refused:
        validate(wide, ImageLimits(max_pixels=30_000_000, max_batch_pixels=30_000_000))
    assert refused.value.code == "image_too_large" and "30,000,000" in str(refused.value)


def test_batch_pixel_budget_fails_only_the_images_past_it(weights):
    config = ClassifierConfig(
        "eca_resnet50", weights, compile=False, max_pixels=40_000, max_batch_pixels=100_000
    )
    classifier = ImageClassifier.load(config)
    images = [encode(photo((200, 200), seed), "PNG") for seed in range(4)]  # 40,000 pixels each
    results = classifier.classify(images)
    assert ["predictions" in r for r in results] == [True, True, False, False]
    assert {r["error"]["code"] for r in results[2:]} == {"batch_too_large"}


def test_one_bad_image_never_fails_its_batch(classifier):
    good = encode(photo((90, 70)), "JPEG")
    batch = [
        good,
        encode(Image.new("L", (39000, 1)), "PNG"),
        b"\xff\xd8\xff\xe0 junk",
        good[: len(good) // 2],
        UNSERVED["GIF"],
        good,
    ]
    results = classifier.classify(batch, top_k=[1, 1, 1, 1, 1, 3])
    assert [r.get("error", {}).get("code") for r in results] == [
        None,
        "image_too_large",
        "undecodable_image",
        "undecodable_image",
        "unsupported_image_type",
        None,
    ]
    assert len(results[0]["predictions"]) == 1 and len(results[5]["predictions"]) == 3
    assert results[0]["predictions"][0] == results[5]["predictions"][0]


def test_a_batchs_images_are_decoded_at_once_on_the_workers_threads(classifier, monkeypatch):
    """Decoding a 0.3-3 MP upload costs more than the model's share of an image at bf16/int8:
    the images of a batch are decoded side by side (one per intra-op thread, as many as the
    worker's CPUs), not one after the other. Two decodes must meet at a barrier here."""
    assert classifier.decode_threads == max(1, torch.get_num_threads())
    met = threading.Barrier(2, timeout=20)
    decode = classifier_module.load_upright_rgb

    def meet_then_decode(image, draft_side=0):
        met.wait()
        return decode(image, draft_side)

    monkeypatch.setattr(classifier_module, "load_upright_rgb", meet_then_decode)
    monkeypatch.setattr(classifier, "_decoder", ThreadPoolExecutor(2))
    images = [encode(photo((200, 150), seed=seed), "JPEG") for seed in (1, 2)]
    results = classifier.classify(images)
    assert all("predictions" in r for r in results), results


def test_an_input_whose_output_is_not_finite_fails_alone(classifier, monkeypatch):
    """Should a model answer NaN for one input (weights or numerics), that input fails as
    ``non_finite_output`` and its neighbours in the batch are answered."""
    images = [encode(photo((90, 70), seed=seed), "JPEG") for seed in range(3)]
    clean = classifier.classify(images)
    runner = classifier.runner

    def second_row_nan(batch: torch.Tensor) -> torch.Tensor:
        logits = runner(batch).clone()
        logits[1] = float("nan")
        return logits

    monkeypatch.setattr(classifier, "runner", second_row_nan)
    served = classifier.classify(images)
    assert served[1]["error"]["code"] == "non_finite_output"
    assert [served[0], served[2]] == [clean[0], clean[2]]


def test_preprocessed_inputs_score_as_their_images_and_bad_ones_fail_alone(classifier):
    """The Open Inference Protocol's FP32 input: a client that preprocesses with the eval
    pipeline gets the answers of the encoded image; a wrong size or a NaN fails alone."""
    images, _ = make_images(3, seed=8, size=(120, 90))
    uploads = [encode(image, "PNG") for image in images]
    pixels = images_to_batch(images, classifier.input_size).contiguous().numpy()
    nan = pixels[0].copy()
    nan[1, 2, 3] = np.nan
    extreme = np.full_like(pixels[0], 1e38)  # finite, but the model would answer NaN
    batch = [
        uploads[0],
        tensor_input(pixels[1].tobytes()),
        tensor_input(pixels[0].tobytes()[:-4]),  # one value short
        tensor_input(nan.tobytes()),
        tensor_input(b"\x00" * 7),  # not whole float32 values
        tensor_input(pixels[2].tobytes()),
        tensor_input(extreme.tobytes()),
    ]
    served = classifier.classify(batch, top_k=2, probabilities=True)
    assert [r.get("error", {}).get("code") for r in served] == [
        None,
        None,
        "invalid_tensor",
        "invalid_tensor",
        "invalid_tensor",
        None,
        "invalid_tensor",
    ]
    assert "beyond ±7.92" in served[6]["error"]["message"]
    assert "NaN" in served[3]["error"]["message"] and "7 uint8" in served[4]["error"]["message"]
    from_images = classifier.classify(uploads, top_k=2, probabilities=True)
    for mine, theirs in zip([served[0], served[1], served[5]], from_images, strict=True):
        assert [p["index"] for p in mine["predictions"]] == [
            p["index"] for p in theirs["predictions"]
        ]
        np.testing.assert_allclose(mine["probabilities"], theirs["probabilities"], atol=1e-6)
        assert len(mine["probabilities"]) == len(CLASS_NAMES)
        assert sum(mine["probabilities"]) == pytest.approx(1, abs=1e-5)
        top = mine["predictions"][0]
        assert top["score"] == max(mine["probabilities"]) == mine["probabilities"][top["index"]]
    assert "probabilities" not in classifier.classify(uploads[:1])[0]


def png_mode(image: Image.Image, **params) -> Image.Image:
    return Image.open(io.BytesIO(encode(image, "PNG", **params)))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (png_mode(Image.new("L", (4, 4), 77)), (77, 77, 77)),
        (png_mode(Image.new("LA", (4, 4), (77, 0))), (255, 255, 255)),
        (png_mode(Image.new("RGBA", (4, 4), (10, 20, 30, 255))), (10, 20, 30)),
        (png_mode(Image.new("RGBA", (4, 4), (10, 20, 30, 0))), (255, 255, 255)),
        (png_mode(Image.new("I;16", (4, 4), 0xAB12)), (0xAB, 0xAB, 0xAB)),
        (png_mode(Image.new("1", (4, 4), 1)), (255, 255, 255)),
        (png_mode(Image.new("RGB", (4, 4), (9, 8, 7)).quantize(4)), (9, 8, 7)),
        (png_mode(Image.new("P", (4, 4), 0), transparency=0), (255, 255, 255)),
        (Image.open(io.BytesIO(encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"))), None),
    ],
    ids=["L", "LA-clear", "RGBA-opaque", "RGBA-clear", "I;16", "1", "P", "P-tRNS", "CMYK"],
)
def test_every_mode_becomes_the_stated_rgb(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    if expected is not None:
        assert rgb.getpixel((1, 1)) == expected
    else:  # CMYK white
        assert min(rgb.getpixel((1, 1))) > 240


def test_load_upright_rgb_refuses_a_corrupt_body_cleanly():
    good = encode(photo((64, 64)), "PNG")
    corrupt = bytearray(good)
    corrupt[60:120] = b"\x00" * 60  # inside IDAT: header fine, pixels broken
    image = validate(bytes(corrupt), LIMITS)
    with pytest.raises(ImageError) as refused:
        load_upright_rgb(image)
    assert refused.value.code == "undecodable_image" and not INTERNALS.search(str(refused.value))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_batch_pixels"):
        ImageLimits(max_pixels=10, max_batch_pixels=5)
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        ImageLimits(max_aspect_ratio=0.5)


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"", "undecodable_image", "empty file"),
        (
            b"RIFF\x10\x00\x00\x00WAVEfmt junk",
            "undecodable_image",
            "not an image: the content is not JPEG, PNG, WEBP",
        ),
        (
            b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00",
            "undecodable_image",
            "not an image: the content is not JPEG, PNG, WEBP",
        ),
        (
            UNSERVED["GIF"],
            "unsupported_image_type",
            "GIF images are not served; send JPEG, PNG, WEBP",
        ),
        (
            UNSERVED["HEIC"],
            "unsupported_image_type",
            "HEIC images are not served; send JPEG, PNG, WEBP",
        ),
    ],
    ids=["empty", "riff-wave", "mp4", "gif", "heic"],
)
def test_refusal_messages_say_exactly_what_is_wrong(data, code, message):
    with pytest.raises(ImageError) as refused:
        validate(data, LIMITS)
    assert (refused.value.code, str(refused.value)) == (code, message)


def test_pillows_bomb_warning_band_is_refused_too():
    """Between Pillow's warning (89 M pixels) and its error (179 M) Pillow only warns: with a
    limit above that band, the warning itself must refuse the image."""
    limits = ImageLimits(max_pixels=150_000_000, max_batch_pixels=150_000_000)
    band = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 M pixels, a few KB
    with pytest.raises(ImageError) as refused:
        validate(band, limits)
    assert (refused.value.code, str(refused.value)) == (
        "image_too_large",
        "more than 150,000,000 pixels",
    )


def test_limits_right_at_their_bounds_are_accepted():
    limits = ImageLimits(max_pixels=1, max_aspect_ratio=1, max_batch_pixels=1)
    validate(encode(Image.new("L", (1, 1)), "PNG"), limits)


def jpeg_structure_ok(data: bytes) -> bool:
    try:
        check_complete("JPEG", data)
    except ImageError:
        return False
    return True


def test_jpeg_walker_follows_the_marker_syntax():
    """Fill bytes and standalone markers between segments are legal; anything but a marker
    where one belongs is not; an EOI before any scan ends the file."""
    good = encode(photo((48, 32)), "JPEG")
    soi, rest = good[:2], good[2:]
    assert jpeg_structure_ok(good)
    assert jpeg_structure_ok(soi + b"\xff\xff\xff" + rest)  # fill bytes before a marker
    assert jpeg_structure_ok(soi + b"\xff\x01" + rest)  # TEM: no length field
    assert jpeg_structure_ok(soi + b"\xff\xd0" + b"\xff\xd7" + rest)  # RST0..RST7 likewise
    assert not jpeg_structure_ok(soi + b"\x00" + rest)  # a stray byte where a marker belongs
    assert jpeg_structure_ok(soi + b"\xff\xd9" + b"\x00\x00")  # EOI right away
    assert not jpeg_structure_ok(soi + b"\xff\xe0\x00\x10" + b"JFIF")  # segment runs off
    assert not jpeg_structure_ok(soi + b"\xff\xe0\x00\x04\x00\x00" + b"\xff")  # ends in a marker


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (  # complete (it has an IEND chunk) but no IHDR
            b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x00IEND\xae\x42\x60\x82",
            LIMITS,
            "not a valid PNG file",
        ),
        (
            UNSERVED["animated PNG"],
            LIMITS,
            "animated PNG images are not served; send JPEG, PNG, WEBP",
        ),
        (
            encode(Image.new("1", (600, 500)), "PNG"),
            ImageLimits(max_pixels=200_000, max_batch_pixels=200_000),
            "600x500 = 300,000 pixels exceeds 200,000",
        ),
    ],
    ids=["bad-png", "apng", "pixels"],
)
def test_header_refusal_messages(data, limits, message):
    with pytest.raises(ImageError) as refused:
        validate(data, limits)
    assert str(refused.value) == message
