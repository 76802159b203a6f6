"""ImageNet-1k: CRATE-B at CBT widths (MSSA + ISTA, the reference's baseline).

The reference recipe, shared by every imagenet_* config: configs/_imagenet.py.
"""

from configs._imagenet import recipe


def get_config():
    return recipe("crate_cbt_base")
