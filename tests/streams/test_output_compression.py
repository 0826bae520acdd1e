"""The stream worker's output compression comes from ``stream.producer_compression``."""

from __future__ import annotations

import pytest

from secstream.config import Settings
from streams.app import build_app


@pytest.mark.parametrize(("configured", "expected"), [("zstd", "zstd"), ("gzip", "gzip"), ("none", None)])
def test_output_compression_is_the_configured_codec(settings: Settings, configured: str,
                                                    expected: str | None) -> None:
    chosen = settings.model_copy(update={"stream": settings.stream.model_copy(
        update={"producer_compression": configured})})
    app, _ = build_app(chosen)
    assert app.conf.producer_compression_type == expected


def test_zstd_is_the_default() -> None:
    assert Settings().stream.producer_compression == "zstd"


def test_an_unknown_codec_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="producer_compression"):
        Settings(stream={"producer_compression": "brotli"})
