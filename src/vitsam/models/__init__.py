"""Model families (ViT, MLP-Mixer, ResNet) behind one contract, picked by name.

    model = create_model("vit_tiny")                     # 28x28x1, 10 classes
    model = create_model("vit_b16", num_classes=10, img_size=32, drop_path_rate=0.1)
    with capture(model, attention=True) as rec: model(images)
"""
from vitsam.models.base import ActivationProbe, AttentionProbe, VisionModel
from vitsam.models.capture import Recording, capture, explicit_attention
from vitsam.models.registry import create_model, list_models, register_model

__all__ = [
    "ActivationProbe", "AttentionProbe", "Recording", "VisionModel", "capture",
    "create_model", "explicit_attention", "list_models", "register_model",
]
