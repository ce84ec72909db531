"""Video recognition models: :class:`Recognizer` (backbone + head + classifier) and the registry
(:func:`build_model`, :func:`list_models`, :func:`register_model`)."""
from tcpnet.models.recognizer import Recognizer
from tcpnet.models.registry import build_model, list_models, register_model

__all__ = ["Recognizer", "build_model", "list_models", "register_model"]
