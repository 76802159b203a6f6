"""ImageNet-1k: ViT-L at CBT widths (softmax attention + MLP).

The reference recipe, shared by every imagenet_* config: configs/_imagenet.py.
"""

from configs._imagenet import recipe


def get_config():
    return recipe("vit_large")
