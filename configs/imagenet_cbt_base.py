"""ImageNet-1k: CBT-B (CBSA + ISTA, the paper's model).

The reference recipe, shared by every imagenet_* config: configs/_imagenet.py.
"""

from configs._imagenet import recipe


def get_config():
    return recipe("cbt_base")
