"""Video recognition models: :class:`Recognizer` (backbone + head + classifier) and the registry
(:func:`build_model`, :func:`list_models`, :func:`register_model`, :func:`create_recognizer`),
plus the helpers every layer above shares: :func:`batchnorms` and :func:`unwrap_model`."""
from tcpnet.models.batchnorm import batchnorms
from tcpnet.models.recognizer import HeadClassifier, Recognizer
from tcpnet.models.registry import (build_model, check_model_name, compose_model, create_recognizer, list_models,
                                    register_model)
from tcpnet.models.unwrap import unwrap_model
from tcpnet.utils.plugins import import_submodules

__all__ = ["Recognizer", "HeadClassifier", "build_model", "check_model_name", "compose_model", "create_recognizer", "list_models", "register_model",
           "batchnorms", "unwrap_model"]

# Every module of this package registers what it defines: a new model factory is one new file here.
import_submodules(__name__)
