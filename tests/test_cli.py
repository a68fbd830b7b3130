"""The command line, end to end, on tiny data with known answers."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashionrec.cli import main
from serving_helpers import make_shop
from test_workflows import SHAPES, make_shape_catalog, shape_photo


def test_tag_known_answer(tiny_hm, tmp_path, capsys):
    out = tmp_path / "tags.csv"
    rc = main(
        [
            "-q",
            "tag",
            "--data",
            str(tiny_hm),
            "--label-column",
            "product_group_name",
            "--out",
            str(out),
            "--input-size",
            "64",
        ]
    )
    assert rc == 0
    df = pd.read_csv(out, dtype=str).set_index("article_id")
    # the two unlabelled images: a red one (like the tops) and a blue one (like the shoes); the corrupt one skipped
    assert df.loc["0300000001", "product_group_name"] == "Garment Upper body"
    assert df.loc["0400000001", "product_group_name"] == "Shoes"
    assert "0500000001" not in df.index
    assert df["confidence"].astype(float).between(0, 1).all()
    # beside the CSV: the settings chosen from the photos (64 px given on the command line) and the report per column
    chosen = json.loads((tmp_path / "tags.photo_defaults.json").read_text())
    assert chosen["input_size"] == 64 and chosen["reasons"]["input_size"] == "set by --input-size"
    report = json.loads((tmp_path / "tags.report.json").read_text())
    assert [c["column"] for c in report["columns"]] == ["product_group_name"] and report["min_confidence"] == 0.0


def test_train_and_predict_on_image_folder(tmp_path, capsys):
    """Labels that only the photo's shape tells apart (see make_shape_catalog): stretching instead of padding to
    a square, in training or in predict, makes the classes identical (accuracy 1/3, wrong predictions)."""
    data = make_shape_catalog(tmp_path / "shapes")
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                "--data",
                str(data),
                "--label-column",
                "product_group_name",
                "--out",
                str(out),
                "--input-size",
                "64",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 9 and m["n_train"] == 36  # the held-out fifth of 45, 3 of each class (stratified)
    assert m["test_accuracy"] >= 8 / 9  # stretched photos: chance (1/3)
    assert (out / "confusion.png").stat().st_size > 1000 and (out / "config.json").exists()
    chosen = json.loads((out / "photo_defaults.json").read_text())  # the settings chosen from the photos, and why
    assert chosen["kind"] == "studio" and chosen["input_size"] == 64 and chosen["reasons"]["input_size"]
    assert chosen["backbone"] == "efficientnet_lite0"  # --backbone auto: studio shots keep the default backbone
    assert json.loads((out / "args.json").read_text())["backbone"] == "efficientnet_lite0"
    assert chosen["flip_tta"] is False and json.loads((out / "config.json").read_text())["flip_tta"] is False
    capsys.readouterr()
    for shape in SHAPES:
        shape_photo(tmp_path / "new" / f"{shape}.png", shape)
    (tmp_path / "new" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["predict", "--model", str(out / "model.pt"), str(tmp_path / "new")]) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out)))
    assert rows[0] == ["image", "rank", "label", "probability"] and len(rows) == 1 + 3 * 3
    assert {Path(r[0]).stem: r[2] for r in rows[1:] if r[1] == "1"} == {s: s for s in SHAPES}
    assert "skipped:" in captured.err and "broken.jpg" in captured.err


def test_train_fashion_mnist_writes_metrics(tmp_path, fmnist_dir):
    out = tmp_path / "fm"
    assert (
        main(
            [
                "-q",
                "train",
                "--data",
                "fashion-mnist",
                "--labels-per-class",
                "5",
                "--method",
                "linear-probe",
                "--seed",
                "0",
                "--out",
                str(out),
                "--input-size",
                "32",
                "--test-size",
                "500",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert 0.4 < m["test_accuracy"] <= 1.0 and 0 < m["macro_f1"] <= 1.0 and m["n_train"] == 50
    # the probe's confidences are calibrated on 10 of the 50 labelled images (the probe refit on the other 40); the
    # saved model applies T, the test images' report shows both sides, and the best class (accuracy) is unchanged
    from fashionrec.evaluation.calibration import T_RANGE, apply_temperature
    from fashionrec.training.checkpoint import load_classifier

    fit, cal = m["calibration_fit"], m["calibration_test"]
    t = cal["temperature"]
    assert fit["n"] == 10 and fit["temperature"] == t and T_RANGE[0] <= t <= T_RANGE[1] and t != 1.0
    assert cal["after"]["accuracy"] == pytest.approx(m["test_accuracy"]) == pytest.approx(cal["before"]["accuracy"])
    assert cal["before"]["mean_confidence"] != pytest.approx(cal["after"]["mean_confidence"])
    clf = load_classifier(out / "model.pt")
    assert clf.temperature == pytest.approx(t, abs=1e-4)
    x = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    p = clf.predict_proba(x)
    clf.temperature = 1.0
    assert np.allclose(p, apply_temperature(clf.predict_proba(x), t), atol=1e-5)


def test_recommend_contract(tmp_path, capsys):
    root, ids, users = make_shop(tmp_path / "shop")
    out = tmp_path / "recs.csv"
    assert (
        main(
            ["-q", "--workspace", str(tmp_path / "ws"), "recommend", "--data", str(root), "--k", "5", "--out", str(out)]
        )
        == 0
    )
    df = pd.read_csv(out, dtype=str)
    assert list(df.columns) == ["customer_id", "prediction"]
    assert set(df["customer_id"]) == set(users) | {"newcust"}  # every customer, including one with no purchases
    preds = df.set_index("customer_id")["prediction"].str.split()
    assert preds.str.len().eq(5).all()
    assert all(p[0].startswith("0") and len(p[0]) == 10 for p in preds)  # ids keep their leading zero
    users_file = tmp_path / "u.txt"
    users_file.write_text("cust001\nnobody\n")
    assert (
        main(
            [
                "-q",
                "--workspace",
                str(tmp_path / "ws"),
                "recommend",
                "--data",
                str(root),
                "--k",
                "3",
                "--out",
                str(out),
                "--recommender",
                "popularity",
                "--users",
                str(users_file),
            ]
        )
        == 0
    )
    assert pd.read_csv(out)["customer_id"].tolist() == ["cust001", "nobody"]


def test_evaluate_prints_table(tmp_path, capsys):
    root, _, _ = make_shop(tmp_path / "shop")
    assert (
        main(
            [
                "-q",
                "--workspace",
                str(tmp_path / "ws"),
                "evaluate",
                "--data",
                str(root),
                "--split-date",
                "2020-05-01",
                "--recommenders",
                "popularity,repurchase,visual",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| repurchase |" in out and "MAP@12" in out
    assert (tmp_path / "ev" / "comparison.png").exists()


def test_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--label-column", "x", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["recommend", "--data", str(tmp_path), "--out", str(tmp_path / "r.csv")]) == 2
    assert "error" in capsys.readouterr().err


def test_demo_writes_report(tmp_path, fmnist_dir, capsys):
    out = tmp_path / "demo"
    args = ["-q", "demo", "--fmnist", "--out", str(out), "--pool", "300", "--test-size", "200", "--input-size", "32"]
    assert main(args) == 0
    for f in [
        "metrics.json",
        "confusion.png",
        "predictions.png",
        "label_efficiency/curve.png",
        "label_efficiency/table.md",
        "config.json",
    ]:
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["labels_per_class"] == 10 and m["n_test"] == 200 and m["test_accuracy"] > 0.3


def test_config_file_sets_defaults_and_cli_overrides(tmp_path, fmnist_dir):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  data: fashion-mnist\n  input_size: 32\n  test_size: 100\n  seed: 3\n")
    out = tmp_path / "run"
    assert main(["-q", "--config", str(cfg), "train", "--labels-per-class", "2", "--seed", "4", "--out", str(out)]) == 0
    args = json.loads((out / "args.json").read_text())
    assert args["input_size"] == 32 and args["test_size"] == 100 and args["seed"] == 4
    assert json.loads((out / "config.json").read_text())["input_size"] == 32


def test_tag_several_columns_with_probe(tiny_hm, tmp_path):
    out = tmp_path / "tags.csv"
    assert (
        main(
            [
                "-q",
                "tag",
                "--data",
                str(tiny_hm),
                "--label-column",
                "product_group_name,colour_group_name",
                "--out",
                str(out),
                "--input-size",
                "32",
                "--backbone",
                "tiny_cnn",
            ]
        )
        == 0
    )
    df = pd.read_csv(out, dtype=str).set_index("article_id")
    assert list(df.columns) == [
        "product_group_name",
        "product_group_name_confidence",
        "colour_group_name",
        "colour_group_name_confidence",
    ]
    assert df.loc["0400000001", "colour_group_name"] == "Blue" and df.loc["0300000001", "colour_group_name"] == "Red"


def _fashionrec_imports(path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashionrec"):
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith(("fashionrec", "argparse"))}
    return names


def test_command_modules_import_only_common_and_workflows():
    """One module per command group: none imports another (only cli.common), and workflows never import the CLI."""
    import fashionrec.cli as cli_pkg
    import fashionrec.workflows as wf_pkg

    cli_dir, wf_dir = Path(cli_pkg.__file__).parent, Path(wf_pkg.__file__).parent
    commands = [p for p in cli_dir.glob("*.py") if p.stem not in {"__init__", "__main__", "main", "common"}]
    assert {p.stem for p in commands} >= {"train", "recommend", "serve"}
    for p in commands:
        bad = {n for n in _fashionrec_imports(p) if n.startswith("fashionrec.cli") and n != "fashionrec.cli.common"}
        assert not bad, f"{p.name} imports {bad}"
    for p in wf_dir.glob("*.py"):
        assert not any(n.startswith(("fashionrec.cli", "argparse")) for n in _fashionrec_imports(p)), p.name


def test_every_command_module_is_registered():
    """Every module of cli/ with a `register` function adds its commands to the parser (a new module that is not
    listed in main.COMMAND_MODULES fails here), in `fashionrec --help` order."""
    import argparse
    import importlib
    import pkgutil

    import fashionrec.cli as cli
    from fashionrec.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    names = [m.name for m in pkgutil.iter_modules(cli.__path__) if m.name != "__main__"]  # __main__ runs the CLI
    modules = [importlib.import_module(f"fashionrec.cli.{n}") for n in names]
    registering = [m for m in modules if callable(getattr(m, "register", None))]
    assert len(registering) >= 6
    for module in registering:
        own = argparse.ArgumentParser().add_subparsers(dest="command")
        module.register(own)
        assert own.choices and set(own.choices) <= set(sub.choices), module.__name__
    assert list(sub.choices) == [
        "train",
        "predict",
        "tag",
        "adapt",
        "backbones",
        "demo",
        "experiment",
        "recommend",
        "similar",
        "evaluate",
        "embed",
        "serve",
    ]


@pytest.mark.parametrize("name", ["fp32-cl", "auto"])
def test_inference_flag_reaches_the_embedder(tmp_path, monkeypatch, name):
    """`--inference` is passed to the catalog embedder as that path (auto is resolved there by the probe)."""
    import fashionrec.features as F

    seen = []
    real = F.embed_image_files

    def spy(*a, path=None, **k):
        seen.append(path.name)
        return real(*a, path=F.InferencePath(), **k)  # eager fp32: fast and deterministic in the test

    monkeypatch.setattr(F, "embed_image_files", spy)
    data = make_shape_catalog(tmp_path / "shop", per_class=2)
    assert (
        main(
            [
                "--workspace",
                str(tmp_path / "ws"),
                "-q",
                "embed",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "f.npz"),
                "--backbone",
                "tiny_cnn",
                "--input-size",
                "32",
                "--inference",
                name,
            ]
        )
        == 0
    )
    assert seen == [name]
    with np.load(tmp_path / "f.npz") as z:
        assert len(z["ids"]) == 6


def test_recommend_workers_flag_reaches_the_ray_path(tmp_path, monkeypatch):
    """`--workers 3` hands the batch job to the Ray path with 3 workers (Ray's output equals the single-process
    file byte for byte: tests/test_distributed.py); here a spy stands in for Ray and writes the local output."""
    import fashionrec.recommend.batch.ray as R
    from fashionrec.recommend import batch

    calls = []

    def spy(model, users, k, out_path, *, workers, **kw):
        calls.append(workers)
        kw.pop("address", None)
        return batch.recommend_all(model, users, k, out_path, **kw)

    monkeypatch.setattr(R, "recommend_all_ray", spy)
    root, _, users = make_shop(tmp_path / "shop")
    outs = []
    for workers in ("1", "3"):
        outs.append(tmp_path / f"recs{workers}.csv")
        assert (
            main(
                [
                    "-q",
                    "--workspace",
                    str(tmp_path / "ws"),
                    "recommend",
                    "--data",
                    str(root),
                    "--k",
                    "4",
                    "--recommender",
                    "popularity",
                    "--out",
                    str(outs[-1]),
                    "--workers",
                    workers,
                ]
            )
            == 0
        )
    assert calls == [3]
    assert outs[0].read_bytes() == outs[1].read_bytes()


# ---------------------------------------------------------------- the CLI explains itself
def _all_parsers():
    from fashionrec.cli.main import build_parser, subcommands

    root = build_parser()
    return [("fashionrec", root), *subcommands(root).items()]


def _example_commands(epilog: str) -> list[list[str]]:
    import shlex

    out = []
    for line in epilog.splitlines():
        if line.startswith("  ") and "fashionrec " in line:  # the indented lines under "example(s):"
            words = shlex.split(line[line.index("fashionrec ") :].split(">")[0])
            out.append(words[1:])
    return out


def test_every_option_has_help_and_shows_its_default():
    import argparse

    from fashionrec.cli.common import HelpFormatter

    missing, no_default = [], []
    for name, parser in _all_parsers():
        fmt = HelpFormatter(prog=name)
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{name} {'/'.join(a.option_strings) or a.dest}"
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(where)
                continue
            shown = fmt._get_help_string(a)
            flag = isinstance(a.default, bool)
            if a.option_strings and not flag and "default" not in shown and "(required)" not in shown:
                no_default.append(where)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help shows no default: {no_default}"


def test_every_command_has_an_example_that_parses(capsys):
    from fashionrec.cli.main import build_parser

    for name, parser in _all_parsers():
        epilog = parser.epilog or ""
        assert epilog.startswith("example"), f"`fashionrec {name} --help` shows no example"
        commands = _example_commands(epilog)
        assert commands, name
        for argv in commands:
            if name != "fashionrec":
                assert argv[0] == name, f"an example of `{name}` runs {argv[0]}"
            args = build_parser().parse_args(argv)  # exits (fails the test) on an unknown option or bad value
            assert callable(args.func)
        assert "--help" not in capsys.readouterr().err


def test_every_help_page_renders():
    """A stray '%' or a bad default in a help string only fails when --help is asked for: render them all."""
    for name, parser in _all_parsers():
        text = parser.format_help()
        assert "usage:" in text and "example" in text, name


def test_help_output_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["recommend", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 12)" in out and "(required)" in out and "examples:" in out
    assert "fashionrec recommend --data shop --out recs.csv" in out


def test_train_needs_data(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, dest, value, old",
    [
        (["train", "--dataset", "fashion-mnist", "--out", "o"], "dataset", "fashion-mnist", "--dataset"),
        (["recommend", "--data", "d", "--out", "r.csv", "--model", "als"], "model", "als", "--model"),
        (["similar", "--data", "d", "--item", "1", "--model", "visual"], "model", "visual", "--model"),
        (["evaluate", "--data", "d", "--models", "popularity"], "models", "popularity", "--models"),
        (["serve", "--data", "d", "--model", "repurchase"], "model", "repurchase", "--model"),
        (["experiment", "label-efficiency", "--dataset", "d"], "dataset", "d", "--dataset"),
    ],
)
def test_renamed_options_take_the_old_spelling_with_a_warning(argv, dest, value, old, capsys):
    from fashionrec.cli.main import parse_args

    assert getattr(parse_args(argv), dest) == value
    err = capsys.readouterr().err
    assert f"{old} is deprecated" in err
    new = [
        a if a != old else {"--dataset": "--data", "--model": "--recommender", "--models": "--recommenders"}[a]
        for a in argv
    ]
    assert getattr(parse_args(new), dest) == value
    assert "deprecated" not in capsys.readouterr().err


# ---------------------------------------------------------------- config files
def _config(tmp_path, text, suffix=".yaml"):
    p = tmp_path / f"run{suffix}"
    p.write_text(text)
    return str(p)


def test_config_unknown_key_names_it_and_suggests(tmp_path, capsys):
    cfg = _config(tmp_path, "recommend:\n  blok_size: 10\n")
    assert main(["--config", cfg, "recommend", "--data", "d", "--out", "r.csv"]) == 2
    err = capsys.readouterr().err
    assert "blok_size" in err and "did you mean 'block_size'" in err and len(err.strip().splitlines()) == 1
    cfg = _config(tmp_path, "inferense: fp32\n")
    assert main(["--config", cfg, "backbones"]) == 2
    assert "'inferense'" in (err := capsys.readouterr().err) and "did you mean 'inference'" in err
    cfg = _config(tmp_path, "recomend:\n  k: 3\n")
    assert main(["--config", cfg, "backbones"]) == 2
    assert "'recomend'" in (err := capsys.readouterr().err) and "'recommend'" in err


@pytest.mark.parametrize(
    "text, key, why",
    [
        ("inference: turbo\n", "inference", "invalid choice 'turbo'"),
        ("recommend:\n  k: abc\n", "recommend.k", "invalid int value"),
        ('{"recommend": {"k": 2.5}}', "recommend.k", "invalid int value"),
        ("recommend:\n  workers: 0\n", "recommend.workers", "positive integer"),
        ("tag:\n  per_photo: maybe\n", "tag.per_photo", "expected true or false"),
        ("tag:\n  probe_c: [1, 2]\n", "tag.probe_c", "expected a single value"),
    ],
)
def test_config_invalid_value_names_the_key(tmp_path, capsys, text, key, why):
    cfg = _config(tmp_path, text, ".json" if text.startswith("{") else ".yaml")
    assert main(["--config", cfg, "backbones"]) == 2
    err = capsys.readouterr().err
    assert f"option '{key}'" in err and why in err and "Traceback" not in err


def test_config_supplies_required_options_and_the_command_line_wins(tmp_path):
    from fashionrec.cli.main import parse_args

    cfg = _config(
        tmp_path, 'workspace = "ws"\nk = 24\n[recommend]\ndata = "shop"\nout = "r.csv"\nrecommender = "als"\n', ".toml"
    )
    args = parse_args(["--config", cfg, "recommend"])
    assert args.data == "shop"
    assert args.out == "r.csv" and args.model == "als" and args.k == 24 and args.workspace == "ws"
    args = parse_args(["--config", cfg, "--workspace", "w2", "recommend", "--k", "5", "--out", "x.csv"])
    assert args.k == 5 and args.out == "x.csv" and args.workspace == "w2" and args.data == "shop"
    # a section wins over a flat value, whatever the order in the file
    cfg = _config(tmp_path, "recommend:\n  k: 7\nk: 3\n")
    assert parse_args(["--config", cfg, "recommend", "--data", "d", "--out", "o"]).k == 7
    assert parse_args(["--config", cfg, "similar", "--data", "d", "--item", "1"]).k == 3
    # YAML's yes/no are booleans; a yes/no choice takes them
    cfg = _config(tmp_path, "train:\n  data: fashion-mnist\n  invert: no\n  input_size: '48'\n")
    args = parse_args(["--config", cfg, "train", "--out", "o"])
    assert args.dataset == "fashion-mnist" and args.invert == "no" and args.input_size == 48


def test_config_old_spelling_warns(tmp_path, capsys):
    from fashionrec.cli.main import parse_args

    cfg = _config(tmp_path, "recommend:\n  model: als\n")
    assert parse_args(["--config", cfg, "recommend", "--data", "d", "--out", "o"]).model == "als"
    assert "'model' is deprecated; use 'recommender'" in capsys.readouterr().err


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fashionrec: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_recommend_out_that_cannot_be_written(tmp_path, capsys, where):
    root, _, _ = make_shop(tmp_path / "shop")
    if where == "directory":
        out, match = tmp_path / "somedir", "is a directory"
        out.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        out, match = tmp_path / "afile" / "recs.csv", "cannot write there"
    rc = main(["-q", "--workspace", str(tmp_path / "ws"), "recommend", "--data", str(root), "--out", str(out)])
    assert match in _one_line_error(capsys, rc)
    assert out.is_dir() or not out.exists()


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("u.csv", 'customer_id\ncust001\n"cust\n002"\n', "u.csv: row 3, column customer_id: customer id 'cust\\n002'"),
        ("u.txt", "cust001\n" + "x" * 10_000 + "\n", "u.txt: line 2: customer id 'xxxx"),
        ("v.txt", "cust001\ncust\x85002\n", "contains the control character U+0085"),
    ],
)
def test_recommend_refuses_customer_ids_the_output_cannot_hold(tmp_path, capsys, name, text, match):
    root, _, _ = make_shop(tmp_path / "shop")
    users = tmp_path / name
    users.write_text(text)
    out = tmp_path / "recs.csv"
    args = ["-q", "--workspace", str(tmp_path / "ws"), "recommend", "--data", str(root), "--out", str(out)]
    rc = main([*args, "--recommender", "popularity", "--users", str(users)])
    assert match in _one_line_error(capsys, rc)
    assert not out.exists()


def test_recommend_warns_about_unknown_customer_ids(tmp_path, caplog):
    root, _, _ = make_shop(tmp_path / "shop")
    users = tmp_path / "u.txt"
    users.write_text("cust001\nnobody\nghost\n")
    out = tmp_path / "recs.csv"
    args = ["-q", "--workspace", str(tmp_path / "ws"), "recommend", "--data", str(root), "--out", str(out)]
    assert main([*args, "--recommender", "popularity", "--users", str(users)]) == 0
    assert "2 of the 3 customer ids given are not in the data ('nobody', 'ghost')" in caplog.text
    assert pd.read_csv(out)["customer_id"].tolist() == ["cust001", "nobody", "ghost"]


def test_negative_or_missing_prices_are_named(tmp_path, caplog):
    from fashionrec.data.interactions import load_transactions

    p = tmp_path / "transactions.csv"
    p.write_text(
        "t_dat,customer_id,article_id,price,sales_channel_id\n"
        "2020-01-01,u1,0100000001,0.01,2\n2020-01-02,u1,0100000002,-0.5,2\n"
        "2020-01-03,u2,0100000001,nan,1\n2020-01-04,u2,0100000002,,1\n2020-01-05,u3,0100000001,0.02,1\n"
    )
    tx = load_transactions(p)
    assert len(tx.events) == 5  # kept as read
    assert "3 rows with a negative, missing or non-numeric price (rows 3, 4, 5)" in caplog.text


def test_recommend_skips_data_customer_ids_the_output_cannot_hold(tmp_path, caplog):
    root, _, users = make_shop(tmp_path / "shop")
    with open(root / "customers.csv", "a") as f:
        f.write('"bad\nid"\n' + "y" * 5000 + "\n")
    out = tmp_path / "recs.csv"
    args = ["-q", "--workspace", str(tmp_path / "ws"), "recommend", "--data", str(root), "--out", str(out)]
    assert main([*args, "--recommender", "popularity"]) == 0
    assert "2 customer id(s) of the data skipped" in caplog.text
    assert set(pd.read_csv(out, dtype=str)["customer_id"]) == set(users) | {"newcust"}


def test_python_dash_m_fashionrec_is_the_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fashionrec", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "recommend" in out.stdout
