"""Model families (ViT, MLP-Mixer, ResNet, timm/<name>) behind one contract, picked by name.

    model = create_model("vit_tiny")                     # 28x28x1, 10 classes
    model = create_model("vit_b16", num_classes=10, img_size=32, drop_path_rate=0.1)
    with capture(model, attention=True) as rec: model(images)
    save_weights(model, "model.safetensors"); load_weights(model, "model.safetensors")

The authors' .npz checkpoints: ``vitsam.models.npz`` (``import_npz``, ``save_npz``).
"""
from vitsam.models.base import ActivationProbe, AttentionProbe, VisionModel
from vitsam.models.capture import Recording, capture, explicit_attention
from vitsam.models.registry import create_model, is_model_name, list_models, register_model
from vitsam.models.vit import resize_pos_embed
from vitsam.models.weights import load_weights, save_weights

__all__ = [
    "ActivationProbe", "AttentionProbe", "Recording", "VisionModel", "capture", "create_model",
    "explicit_attention", "is_model_name", "list_models", "load_weights", "register_model",
    "resize_pos_embed", "save_weights",
]
