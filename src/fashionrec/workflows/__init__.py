"""The recipes the CLI, the server and the Python API all call: no argparse, no HTTP, no printing of results.

- `shop`:       a data folder -> Shop (catalog, log, cached image features) -> fitted recommenders
- `classify`:   labelled photos, the held-out split, train / predict / tag image classifiers
- `experiment`: the label-efficiency experiment and the offline Fashion-MNIST demo
- `recommend`:  top-k for every customer, similar items, the leak-free multi-window evaluation, catalog embedding
- `serve`:      build the server's state and app for a data folder, and run it
- `shop_demo`:  `fashionrec demo`: the synthetic shop, then tags, similar items, recommendations and an evaluation

Nothing is imported here: `import fashionrec.workflows.shop` loads only what a shop needs.
"""
