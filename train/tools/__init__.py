"""Command-line tools around the training program, each named for what it does; each composes
the loop's pieces (`train.loop.load_experiment`, the data pipeline, the library):

- `python -m train.tools.generate`: sample text from a trained byte language model;
- `python -m train.tools.look_inside`: attention maps, per-layer coding rate and sparsity of a
  trained vision model;
- `python -m train.tools.attention_jaccard`: emergent segmentation, the Jaccard index of
  attention maps against the dataset's masks;
- `python -m train.tools.predict_masks`: the segmentation model's predicted masks as PNGs, and
  its mIoU;
- `python -m train.tools.convert_official`: an official PyTorch CBT checkpoint as a step-0
  training checkpoint;
- `python -m train.tools.adapt_vit`: a pretrained timm / big_vision ViT, its attention swapped
  for the paper's adapted attention, as a step-0 training checkpoint.

Bad input gets one line naming the argument on stderr and exit code 2.
"""
