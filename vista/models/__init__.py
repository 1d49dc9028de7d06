"""VISTA-Net models: the structured attention module, backbones, heads and a small registry.

Importable with torch + timm alone (no pydantic, ray, mlflow), so model checks run anywhere.
"""

from . import peers  # noqa: F401  (registers the peer models)
from .attention import AttentionConfig, AttentionMaps, StructuredAttention, attention_config, create_attention
from .backbone import Backbone, PretrainedWeightsError
from .registry import create_model, list_models
from .vista_net import ModelConfig, VistaNet, model_config, register_model

__all__ = [
    "AttentionConfig",
    "AttentionMaps",
    "Backbone",
    "ModelConfig",
    "PretrainedWeightsError",
    "StructuredAttention",
    "VistaNet",
    "attention_config",
    "create_attention",
    "create_model",
    "list_models",
    "model_config",
    "register_model",
]
