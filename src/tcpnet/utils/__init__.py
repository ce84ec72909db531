"""Small model utilities (complexity counting)."""
from tcpnet.utils.complexity import complexity

__all__ = ["complexity"]
