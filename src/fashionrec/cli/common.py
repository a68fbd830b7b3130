"""What every command shares: the workspace and feature cache, progress, the backbone and classifier options.

Command modules import this and the workflows, never each other. Nothing heavy is imported at module level:
`fashionrec --help` builds every parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE
from fashionrec.training.photo_defaults import CLUTTERED_BACKBONE


# ---------------------------------------------------------------- parsers
class HelpFormatter(argparse.HelpFormatter):
    """Text with line breaks (the examples of an epilog) is kept as written, other text is wrapped; each option's
    help ends with its default unless the help already says it (the word "default") or the option is an on/off
    flag, and a required option's with "(required)"."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return text + " (required)"
        if (
            "default" in text
            or "%(default)" in text
            or action.default in (None, argparse.SUPPRESS)
            or isinstance(action.default, bool)
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every `fashionrec` parser: the help formatter above (sub-commands get it through `parser_class`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def examples(*commands: str) -> str:
    """A sub-command's epilog: one example command per line, shown by `fashionrec COMMAND --help`."""
    return "example" + ("s" if len(commands) > 1 else "") + ":\n" + "\n".join(f"  {c}" for c in commands)


class RenamedOption(argparse._StoreAction):
    """An option with a new name that still takes its old spelling for one release, with a warning:
    `p.add_argument("--data", "--dataset", action=RenamedOption, deprecated=("--dataset",), ...)`."""

    def __init__(self, option_strings, dest, deprecated: tuple[str, ...] = (), **kwargs):
        self.deprecated = tuple(deprecated)
        kwargs.setdefault("metavar", option_strings[0].lstrip("-").upper().replace("-", "_"))
        super().__init__(option_strings, dest, **kwargs)
        if self.help and self.deprecated:
            self.help += f" ({', '.join(self.deprecated)}: former spelling, deprecated)"

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            print(
                f"fashionrec: warning: {option_string} is deprecated and will be removed in the next release; "
                f"use {self.option_strings[0]}",
                file=sys.stderr,
            )
        setattr(namespace, self.dest, values)


# ---------------------------------------------------------------- run context
def workspace(args: argparse.Namespace) -> Path:
    """--workspace, else $FASHIONREC_HOME, else the user's cache folder."""
    from fashionrec.io import default_workspace

    return Path(args.workspace) if getattr(args, "workspace", None) else default_workspace()


def feature_cache(args: argparse.Namespace):
    from fashionrec.features import FeatureCache

    return FeatureCache(workspace(args))


def progress(args: argparse.Namespace) -> bool:
    """Progress bars unless -q."""
    return not getattr(args, "quiet", False)


def device(args: argparse.Namespace):
    """--device resolved to a torch.device (`fashionrec.device.resolve_device`); CUDA asked for and absent is a
    one-line error."""
    from fashionrec.device import resolve_device
    from fashionrec.errors import FashionrecError

    try:
        return resolve_device(getattr(args, "device", "auto"))
    except ValueError as e:
        raise FashionrecError(str(e)) from None


def args_dict(args: argparse.Namespace) -> dict:
    """The parsed options, for the JSON written beside a run's outputs."""
    return {k: v for k, v in vars(args).items() if k != "func"}


# ---------------------------------------------------------------- shared options
BACKBONE_HELP = "a backbone name or a `fashionrec adapt` folder"
INFERENCE_PATHS = ["auto", "fp32", "fp32-cl", "bf16", "bf16-cl", "onnx-fp32", "onnx-int8"]


AUTO_BACKBONE_HELP = (
    "a backbone name or a `fashionrec adapt` folder (default auto: the folder `fashionrec adapt` wrote for this "
    f"--data in this workspace when it retrieved better than ImageNet, else {DEFAULT_BACKBONE})"
)


def add_backbone_args(
    p: argparse.ArgumentParser,
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    inference: bool = True,
    adapted_by_default: bool = False,
) -> None:
    """--backbone and --input-size for commands that embed photos with a backbone (and --inference where the
    command embeds a catalog through the feature cache). `adapted_by_default`: --backbone defaults to auto (the
    recommenders and the server: `fashionrec.artifacts.registry`)."""
    if adapted_by_default:
        p.add_argument("--backbone", default="auto", help=AUTO_BACKBONE_HELP)
    else:
        p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=BACKBONE_HELP)
    p.add_argument("--input-size", type=int, default=input_size, help="square input resolution in pixels")
    if inference:
        p.add_argument(
            "--inference",
            default="auto",
            choices=INFERENCE_PATHS,
            help="how the backbone runs on CPU (default auto: a short probe picks the fastest path whose "
            "features match eager fp32, cached per machine in the workspace; onnx-int8 is opt-in only)",
        )


def add_classifier_args(p: argparse.ArgumentParser, *, backbone_from_photos: bool = False) -> None:
    """How an image classifier is built and trained (train, tag, experiment). `backbone_from_photos`: --backbone
    defaults to auto, resolved by `resolve_photo_defaults` (train, tag)."""
    p.add_argument(
        "--method",
        choices=["linear-probe", "finetune"],
        default="linear-probe",
        help="linear-probe: logistic regression on frozen pretrained features (best with few labels); finetune: "
        "train the network too, in the stages of --stages",
    )
    if backbone_from_photos:
        p.add_argument(
            "--backbone",
            default="auto",
            help="registered name (`fashionrec backbones`), any timm model name, or auto: chosen from the photos "
            f"({CLUTTERED_BACKBONE} for photos people took when its weights are installed, else {DEFAULT_BACKBONE})",
        )
    else:
        p.add_argument(
            "--backbone",
            default=DEFAULT_BACKBONE,
            help="registered name (`fashionrec backbones`) or any timm model name",
        )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help=f"square input resolution in pixels (default auto: {DEFAULT_INPUT_SIZE} for 28 px greyscale "
        f"arrays; for photo folders the backbone's native size, or the photos' own size when smaller)",
    )
    p.add_argument(
        "--invert",
        choices=["auto", "yes", "no"],
        default="auto",
        help="invert greyscale light-on-dark inputs to look like shop photos (auto: detect)",
    )
    p.add_argument(
        "--adapt-bn",
        action="store_true",
        help="re-estimate BatchNorm statistics on unlabelled target images (AdaBN; measured to hurt the "
        "Fashion-MNIST probe, so off by default)",
    )
    p.add_argument(
        "--taps",
        default="auto",
        help="layers to pool: 'final', block indices like '4,5', or 'auto' (chosen from the photos and the backbone)",
    )
    p.add_argument(
        "--flip-tta",
        choices=["auto", "yes", "no"],
        default="auto",
        help="linear probe: read the mean of each photo's and its mirror image's features (auto: on for colour "
        "photos, chosen from the photos)",
    )
    p.add_argument("--probe-c", type=float, default=0.1, help="inverse L2 strength of the logistic-regression probe")
    p.add_argument("--stages", default="head=1,last:2=3,all=4", help="fine-tuning schedule: WHAT=EPOCHS,...")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning: the head's peak learning rate")
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="fine-tuning: each block's learning rate is the one above it times this (1 = no decay)",
    )
    p.add_argument(
        "--bn",
        choices=["train", "frozen"],
        default="train",
        help="fine-tuning: BatchNorm uses batch statistics (train, re-estimated each epoch) or keeps its "
        "running statistics (frozen)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (feature extraction and fine-tuning)")
    p.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="fine-tuning: at most this many steps per epoch (default: one pass over the training images)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (label sampling, splits, initialisation)")


def resolve_input_size(args: argparse.Namespace, data_dir: str | Path | None) -> int:
    """Resolve --input-size auto and record the result in args (it is saved in args.json)."""
    from fashionrec.workflows.classify import resolve_input_size as resolve

    args.input_size = resolve(args.input_size, data_dir, args.backbone)
    return args.input_size


def resolve_photo_defaults(args: argparse.Namespace, data_dir: str | Path | None):
    """Resolve --input-size, --taps and --flip-tta 'auto' from a sample of the photos and the backbone
    (`training.photo_defaults`), record the result in args (saved in args.json), print the choice and its reasons
    (unless -q). -> the PhotoDefaults (for `photo_defaults.json` beside the outputs)."""
    from fashionrec.training.photo_defaults import resolve_photo_defaults as resolve

    d = resolve(
        data_dir,
        args.backbone,
        input_size=args.input_size,
        taps=args.taps,
        flip=args.flip_tta,
        fashion_mnist_dir=getattr(args, "data_dir", None),
    )
    args.backbone = d.backbone
    args.input_size = d.input_size
    args.taps = ",".join(map(str, d.taps))
    args.flip_tta = "yes" if d.flip_tta else "no"
    if progress(args):
        print(d.describe(), file=sys.stderr)
    return d


def classifier_config(args: argparse.Namespace):
    """The options of add_classifier_args -> ClassifierConfig (after resolve_input_size)."""
    from fashionrec.errors import FashionrecError
    from fashionrec.training.finetune import FinetuneConfig
    from fashionrec.training.tasks import ClassifierConfig

    try:
        stages = tuple((what, int(epochs)) for what, epochs in (s.split("=") for s in args.stages.split(",")))
    except ValueError:
        raise FashionrecError(f"--stages must be WHAT=EPOCHS,... (e.g. head=1,all=4), not {args.stages!r}") from None
    ft = FinetuneConfig(
        stages=stages,
        lr=args.lr,
        lr_decay=args.lr_decay,
        bn=args.bn,
        batch_size=args.batch_size,
        seed=args.seed,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    return ClassifierConfig(
        method=args.method,
        backbone=args.backbone,
        input_size=args.input_size,
        invert={"auto": None, "yes": True, "no": False}[args.invert],
        adapt_bn=args.adapt_bn,
        taps=None if args.taps == "auto" else tuple(args.taps.split(",")),
        probe_C=args.probe_c,
        flip_tta=getattr(args, "flip_tta", "no") == "yes",
        seed=args.seed,
        finetune=ft,
    )
