"""Covariance pooling math: biased covariance, matrix square roots (Newton-Schulz, eigh), triu vectorisation."""
from tcpnet.ops._precision import no_autocast
from tcpnet.ops.covariance import covariance
from tcpnet.ops.isqrt import isqrt_cov
from tcpnet.ops.sqrtm import sqrtm_eigh, sqrtm_newton_schulz
from tcpnet.ops.triu import triu_index, triu_vec

__all__ = ["covariance", "isqrt_cov", "no_autocast", "sqrtm_eigh", "sqrtm_newton_schulz", "triu_index", "triu_vec"]
