"""vitsam: ViT, MLP-Mixer and ResNet trained with and without SAM (Chen et al., ICLR 2022)."""

__version__ = "0.1.0"
