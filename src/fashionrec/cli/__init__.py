"""The `fashionrec` command line: one module per command group, each with `register(subparsers)`.

- `common`:     workspace, feature cache, progress, the shared backbone/classifier options
- `train`:      train, predict, tag, adapt, backbones
- `demo`:       demo
- `experiment`: experiment
- `recommend`:  recommend, similar, evaluate
- `embed`:      embed
- `serve`:      serve
- `main`:       the parser (in that order) and `main()`, the console-script entry point (`fashionrec.cli:main`)

Commands parse, call a workflow (`fashionrec.workflows`), and print; no command module imports another.
"""

from fashionrec.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
