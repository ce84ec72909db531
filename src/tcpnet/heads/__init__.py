"""Pooling heads that turn video-major frame features (N*T, C, H, W) into clip vectors (N, D).

Every head has ``forward(x, num_segments) -> (N, D)`` and an ``out_dim`` attribute, so TCP, GAP
and GCP are interchangeable on any backbone that produces feature maps. Heads are registered by
name: ``create_head("tcp", in_channels, num_segments=T, dim=64)``, ``list_heads()``.
"""
from tcpnet.heads.attention import TCA, TSA, TemporalAttention
from tcpnet.heads.base import Head, ParamGroupSpec, check_frame_batch
from tcpnet.heads.gap import GAPHead
from tcpnet.heads.gcp import GCPHead
from tcpnet.heads.registry import create_head, get_head, list_heads, register_head
from tcpnet.heads.tcp import TCPHead
from tcpnet.utils.plugins import import_submodules

__all__ = ["Head", "ParamGroupSpec", "TCPHead", "GAPHead", "GCPHead", "TemporalAttention", "TSA", "TCA",
           "check_frame_batch", "create_head", "get_head", "list_heads", "register_head"]

# Every module of this package registers what it defines: a new head is one new file here.
import_submodules(__name__)
