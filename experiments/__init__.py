"""Programs that train and report, the top floor of the repository: they may use `train/`,
`benchmarks/` and the library; nothing imports them.

- `python -m experiments.compare`: models side by side with one recipe (tables of docs/results);
- `python -m experiments.adapt_mnist`: pretrain a softmax ViT, adapt it, fine-tune;
- `python -m experiments.synthetic_compression`: exact CBSA steps on a union of subspaces;
- `python -m experiments.results_readme`: docs/results/README.md from the JSON files there.
"""
