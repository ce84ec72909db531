"""Pooling heads that turn video-major frame features (N*T, C, H, W) into clip vectors (N, D).

Every head has ``forward(x, num_segments) -> (N, D)`` and an ``out_dim`` attribute, so TCP, GAP
and GCP are interchangeable on any backbone that produces feature maps.
"""
from tcpnet.heads.attention import TCA, TSA, TemporalAttention
from tcpnet.heads.gap import GAPHead
from tcpnet.heads.gcp import GCPHead
from tcpnet.heads.tcp import TCPHead

__all__ = ["TCPHead", "GAPHead", "GCPHead", "TemporalAttention", "TSA", "TCA"]
