"""peftcheck run | validate | list | schema | fixtures | report | matrix | grid | findings."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftcheck.errors import MissingExtraError, PeftcheckError, SuiteError

__all__ = ["main"]


def _suite_files(paths: Sequence[str]) -> list[Path]:
    from peftcheck.session import looks_like_suite

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*.y*ml")) if looks_like_suite(p))
        elif path.exists():
            files.append(path)
        else:
            raise SuiteError("no such file or folder", file=raw)
    if not files:
        raise SuiteError("no suite files (YAML with a top-level `suite:` key) found", file=" ".join(paths))
    return files


def deep_validate(path: Path) -> list[str]:
    """Load a suite and resolve everything short of training; returns the problems found."""
    from peftcheck import artifact, data, methods, models
    from peftcheck.loader import check_yields_items, load_suite

    loaded = load_suite(path)
    spec, problems = loaded.spec, []
    try:
        check_yields_items(loaded)  # issue 26
    except SuiteError as exc:
        problems.append(exc.format())

    def note(exc: SuiteError) -> None:
        line = loaded.line_of(*(exc.field or "").split("."))
        problems.append(exc.located(file=str(path), line=line).format())

    configs = {}
    for name, method in spec.methods.items():
        if method.adapter is not None:  # artifact mode: its folder was read when the suite loaded (issue 15)
            if (refused := artifact.weights_refused(artifact.folder(loaded, name))) is not None:  # issue 26
                note(SuiteError(refused, field=f"methods.{name}.adapter"))
            continue
        try:
            configs[name] = methods.build_config(method, name=name, max_steps=int(spec.train_args(name)["max_steps"]))
        except SuiteError as exc:
            note(exc)
        except MissingExtraError as exc:  # not a problem of the suite: its items skip at run time
            print(f"{path}: methods.{name}: not checked here: {exc}", file=sys.stderr)
    if configs and not problems:
        for problem in _apply_to_skeleton(loaded, path, configs):
            note(problem)
    for ref, field in ((spec.model, "model"),):
        try:
            models.resolve_model(ref, base_dir=path.parent, build=False, trust_remote_code=spec.trust_remote_code)
        except SuiteError as exc:
            exc.field = exc.field or field
            note(exc)
        except PeftcheckError as exc:
            problems.append(f"{path}: {field}: {exc}")
    for ref in filter(None, (spec.data.dataset, spec.data.unrelated)):
        try:
            data.resolve_dataset(ref, base_dir=path.parent)
        except SuiteError as exc:
            note(exc)
    return problems


def _apply_to_skeleton(loaded: Any, path: Path, configs: dict[str, Any]) -> list[SuiteError]:
    """Apply each peft method to the suite's model built on the meta device (no weights, no
    memory), so what peft only finds at get_peft_model (a target that matches nothing, a
    group size that does not divide a layer) is reported before anything trains (issue 13)."""
    from peftcheck import methods, models

    skeleton, why = models.skeleton(loaded.spec.model, base_dir=path.parent, trust_remote_code=loaded.spec.trust_remote_code)
    if skeleton is None:
        print(f"{path}: model: methods not applied to it here: {why}", file=sys.stderr)
        return []
    found = []
    for name, config in configs.items():
        if getattr(config, "backend", None) == "adapters":
            continue  # AdapterHub builds its layers itself; its own config validation ran above
        try:
            methods.apply_to_skeleton(skeleton(), config, name=name)
        except SuiteError as exc:
            found.append(exc)
        except NotImplementedError as exc:  # an init that computes on the weights (PiSSA's SVD) cannot on meta
            print(f"{path}: methods.{name}: not applied to the skeleton: {exc}", file=sys.stderr)
    return found


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in _suite_files(args.paths):
        try:
            problems = deep_validate(path)
        except SuiteError as exc:
            problems = [exc.format()]
        failed += bool(problems)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{path}: ok")
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    import pytest

    _suite_files(args.paths)  # a clear error before pytest starts
    extra = list(args.pytest_args)
    if args.peftcheck_results:
        extra += ["--peftcheck-results", args.peftcheck_results]
    if args.peftcheck_cache:
        extra += ["--peftcheck-cache", args.peftcheck_cache]
    return int(pytest.main([*args.paths, "-p", "no:cacheprovider", *extra]))


def cmd_list(args: argparse.Namespace) -> int:
    from peftcheck.loader import load_suite

    for path in _suite_files(args.paths):
        loaded = load_suite(path)
        for method in loaded.spec.methods:
            for check in loaded.spec.expectations(method):
                print(f"{path}::{loaded.spec.suite}::{method}::{check}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from peftcheck.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_fixtures(args: argparse.Namespace) -> int:
    from peftcheck.fixtures import BUILTIN_MODELS, cache_dir, materialise

    names = args.names or list(BUILTIN_MODELS)
    for name in names:
        if name not in BUILTIN_MODELS:
            raise SuiteError(f"got {name!r}, built-in models are {sorted(BUILTIN_MODELS)}")
        print(f"{name}: {materialise(name)}")
    print(f"cache: {cache_dir()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftcheck", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run suites through pytest", usage="peftcheck run PATH... [--results FILE] [--cache MODE] [-- PYTEST_ARGS...]"
    )
    run.add_argument("paths", nargs="+", metavar="PATH")
    from peftcheck.plugin import add_run_options

    add_run_options(run.add_argument, prefix="--", results_default=None)
    run.set_defaults(func=cmd_run, pytest_args=[])
    validate = sub.add_parser("validate", help="check suites without training")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.set_defaults(func=cmd_validate)
    listing = sub.add_parser("list", help="print the test id of every check item")
    listing.add_argument("paths", nargs="+", metavar="PATH")
    listing.set_defaults(func=cmd_list)
    schema = sub.add_parser("schema", help="print the JSON Schema of a suite file")
    schema.set_defaults(func=cmd_schema)
    fixtures = sub.add_parser("fixtures", help="build the built-in models into the cache")
    fixtures.add_argument("names", nargs="*", metavar="NAME")
    fixtures.set_defaults(func=cmd_fixtures)
    for module in ("peftcheck.report.cli", "peftcheck.matrix", "peftcheck.report.grid", "peftcheck.findings"):
        try:
            __import__(module, fromlist=["add_parser"]).add_parser(sub)
        except ImportError:
            continue
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after the first `--` goes to pytest untouched (argparse would otherwise let a
    # trailing positional swallow `--results` and the paths' own options)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if passthrough:
        if args.command != "run":
            parser.error(f"arguments after -- are pytest options, only `peftcheck run` takes them: {passthrough}")
        args.pytest_args = passthrough
    try:
        return int(args.func(args))
    except PeftcheckError as exc:
        print(f"peftcheck: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `peftcheck list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
