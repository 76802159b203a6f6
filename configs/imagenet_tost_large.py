"""ImageNet-1k: ToST-L at CBT widths (TSSA + ISTA, the reference's baseline).

The reference recipe, shared by every imagenet_* config: configs/_imagenet.py.
"""

from configs._imagenet import recipe


def get_config():
    return recipe("tost_large")
