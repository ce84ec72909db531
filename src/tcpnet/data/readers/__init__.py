"""The frame readers behind :func:`tcpnet.data.load_clip`, one module per source of frames.

``pyav``: video files through PyAV (the default; decodes only what a clip needs, frame-exact).
``torchcodec``: video files through the optional torchcodec package (``data.reader: torchcodec``).
``frames``: frame folders of images (the TSN/TSM layout, ``data.frame_template``).
Each returns uint8 ``(T, H, W, 3)`` arrays and raises :mod:`tcpnet.data.errors`; none imports another
data module but ``records`` and ``errors`` (and ``torchcodec`` its PyAV fallback).
"""
