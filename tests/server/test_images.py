"""The image-classification service with real encoded images."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from image_cases import encode, image_in_mode, psd, tiff_associated_alpha
from PIL import Image
from server_testlib import Running

from modelrepo import preprocess_image
from protocol import image_classification_pb2 as img_pb
from server.tensors import softmax


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _image(seed: int, size: tuple[int, int] = (20, 14), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
async def test_classify_matches_preprocess_and_model(running: Running, fmt: str) -> None:
    images = [_encode(_image(seed), fmt) for seed in range(3)]
    response = await running.images.Classify(
        img_pb.ClassifyRequest(model_name="tinyrgb", images=images, top_k=2)
    )
    assert (response.model_name, response.model_version) == ("tinyrgb", "1")
    model = running.models["tinyrgb"]
    for data, result in zip(images, response.results, strict=True):
        # The expectation goes through the same decode + modelrepo.preprocess_image path.
        x = preprocess_image(Image.open(io.BytesIO(data)), model.config.preprocessing)[None]
        probabilities = softmax(model.expected(x))[0]
        best = np.argsort(-probabilities, kind="stable")[:2]
        assert [c.index for c in result.classes] == best.tolist()
        assert [c.label for c in result.classes] == [model.config.labels[i] for i in best]
        np.testing.assert_allclose([c.score for c in result.classes], probabilities[best], rtol=1e-4)


async def test_classify_default_model_and_grayscale_conversion(running: Running) -> None:
    # No model named: the first loaded one ('tiny', grayscale); an RGB image is converted.
    response = await running.images.Classify(img_pb.ClassifyRequest(images=[_encode(_image(7), "PNG")]))
    assert response.model_name == "tiny"
    assert len(response.results[0].classes) == 1
    assert response.results[0].classes[0].label in ("zero", "one", "two", "three")


async def test_classify_top_k_is_capped_at_class_count(running: Running) -> None:
    response = await running.images.Classify(
        img_pb.ClassifyRequest(model_name="tinyrgb", images=[_encode(_image(1), "PNG")], top_k=50)
    )
    classes = response.results[0].classes
    assert sorted(c.label for c in classes) == ["blue", "green", "red"]
    assert sum(c.score for c in classes) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([b"not an image at all"], "image 0 (19 bytes) is not a recognised image format"),
        ([b""], "image 0 is empty"),
        ([], "the request holds no images"),
        ([b"x"] * 17, "the request holds 17 images; model 'tiny' accepts at most 16"),
    ],
    ids=["garbage", "empty", "none", "too many"],
)
async def test_classify_bad_images(running: Running, images: list[bytes], message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.images.Classify(img_pb.ClassifyRequest(model_name="tiny", images=images))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


async def test_classify_truncated_image(running: Running) -> None:
    data = _encode(_image(3, size=(64, 64)), "PNG")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.images.Classify(img_pb.ClassifyRequest(images=[data[: len(data) // 2]]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 0 could not be decoded" in (info.value.details() or "")


async def test_decompression_bomb_is_refused_before_decoding(running: Running) -> None:
    # 5000x5000 of one colour compresses to a few kB but would decode to 25 Mpixel > 16.7 Mpixel.
    bomb = _encode(Image.new("L", (5000, 5000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.images.Classify(img_pb.ClassifyRequest(images=[bomb]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 0 is 5000x5000 (25000000 pixels); the server accepts at most 16777216 pixels" in (
        info.value.details() or ""
    )


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("tiny", tiff_associated_alpha()),
        ("tinyrgb", tiff_associated_alpha()),
        ("tiny", encode(image_in_mode("LAB"), "TIFF")),
    ],
    ids=["La TIFF for L", "La TIFF for RGB", "LAB TIFF for L"],
)
async def test_images_pillow_could_not_convert_are_classified(
    running: Running, model: str, data: bytes
) -> None:
    # Pillow has no La -> L / RGB nor LAB -> L conversion; these were INTERNAL errors.
    response = await running.images.Classify(img_pb.ClassifyRequest(model_name=model, images=[data], top_k=1))
    loaded = running.models[model]
    x = preprocess_image(Image.open(io.BytesIO(data)), loaded.config.preprocessing)[None]
    best = int(np.argmax(softmax(loaded.expected(x))[0]))
    assert [c.index for c in response.results[0].classes] == [best]


def _nan_tiff() -> bytes:
    pixels = np.full((6, 6), 0.5, dtype=np.float32)
    pixels[2, 3] = np.nan
    return encode(Image.fromarray(pixels, "F"), "TIFF")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            encode(image_in_mode("RGB"), "EPS"),
            "image 0 is in EPS format, which the server does not decode; "
            "expected one of JPEG, PNG, BMP, GIF, WEBP, TIFF, PPM",
        ),
        (psd(), "image 0 is in PSD format, which the server does not decode; expected one of JPEG, PNG"),
        (encode(image_in_mode("RGB"), "PCX"), "image 0 is in PCX format"),
        (
            _nan_tiff(),
            "image 0 has 1 NaN or infinite float pixels; expected finite values in 0.0..1.0 for RGB",
        ),
    ],
    ids=["EPS", "PSD", "PCX", "NaN float TIFF"],
)
async def test_refused_formats_and_pixels_are_invalid_argument(
    running: Running, data: bytes, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.images.Classify(img_pb.ClassifyRequest(model_name="tinyrgb", images=[data]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


async def test_classify_unknown_model(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.images.Classify(img_pb.ClassifyRequest(model_name="nope", images=[b"x"]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
