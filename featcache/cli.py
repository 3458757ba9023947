"""The `featcache` command line: maps flags to library parameters and calls the library, nothing more.

Option names are the library's parameter names (``--batch-size`` is ``batch_size``), so a library
error about a parameter is shown with the flag the user typed; choices and defaults are read from
the library's own constants. Nothing heavy is imported until a command needs it.
"""

import dataclasses
import inspect
import os
import sys

import click

from featcache._version import __version__
from featcache.backbones import CROP_FRACTION, POOLINGS, RESIZES
from featcache.cache import FLIP_MODES, TTAS
from featcache.errors import FeatcacheError, ParameterError
from featcache.compute import PRECISIONS
from featcache.extract import DTYPES, extract as extract_features
from featcache.images import CPU_BATCH
from featcache.settings import FinetuneSettings, TrainOptions
from featcache.shots import REPEATS


def default(owner, name: str):
    """The library's default for ``name``: a function's keyword default or a dataclass field's default."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner)}[name]
    return inspect.signature(owner).parameters[name].default


class Command(click.Command):
    """Shows a library ParameterError with the flag of the option that carries that parameter."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ParameterError as error:
            option = next((p for p in self.params if p.name == error.parameter and p.opts), None)
            if option is None:
                raise
            raise FeatcacheError(error.describe(f"{option.opts[0]} {error.value}")) from None


class Group(click.Group):
    """Ends every failure in one ``error: ...`` line on stderr and a non-zero exit, never a traceback."""

    command_class = Command
    group_class = type  # sub-groups are Groups too

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra) or 0
        except click.UsageError as error:
            if error.ctx is not None:
                click.echo(error.ctx.get_usage(), err=True)
            click.echo(f"error: {error.format_message()}", err=True)
            code = error.exit_code
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            code = error.exit_code
        except FeatcacheError as error:
            click.echo(f"error: {error}", err=True)
            code = 2
        except (click.Abort, KeyboardInterrupt):
            click.echo("error: interrupted; rerun the same command to resume", err=True)
            code = 130
        except OSError as error:  # the file system said no: say which file and why
            where = f" ({error.filename})" if error.filename else ""
            click.echo(f"error: {error.strerror or error}{where}: free space or fix permissions, then rerun", err=True)
            code = 1
        except Exception as error:  # a bug: one line, and the traceback with --verbose
            if os.environ.get("FEATCACHE_VERBOSE"):
                raise
            click.echo(f"error: unexpected {type(error).__name__}: {error} (rerun with --verbose for the traceback "
                       "and report it)", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _value(text: str):
    """A command-line value as Python: numbers, true/false and none are converted, the rest stays text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _pairs(items):
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            raise click.BadParameter(f"{item!r} must look like NAME=VALUE")
        yield key, text


def key_values(ctx, param, items) -> dict:
    """Click callback: ('C=0.1', 'kernel=rbf') -> {'C': 0.1, 'kernel': 'rbf'}."""
    return {key: _value(text) for key, text in _pairs(items)}


def key_lists(ctx, param, items) -> dict:
    """Click callback: ('C=0.01,0.1,1',) -> {'C': [0.01, 0.1, 1]}."""
    return {key: [_value(v) for v in text.split(",")] for key, text in _pairs(items)}


def cluster_options(command):
    """--scheduler and --workers: run a command's work on a Dask cluster (featcache.cluster)."""
    options = [
        click.option("--scheduler", metavar="ADDRESS", help="Run on the Dask scheduler at ADDRESS (tcp://host:8786)."),
        click.option("--workers", metavar="N|gpu", callback=lambda ctx, param, text: _value(text) if text else None,
                     help="Run on a local Dask cluster of N worker processes, or one per visible GPU."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def backbone_options(command):
    """The options every command that builds a backbone shares, named as make_spec's parameters."""
    options = [
        click.option("--weights", default="imagenet", show_default=True,
                     help="imagenet, none (random), or a weights file."),
        click.option("--input-size", type=click.IntRange(1), help="Square input size in pixels (default: the backbone's)."),
        click.option("--pooling", help=f"{'|'.join(POOLINGS)}; hub presets: cls, mean, cls+mean, pooled, projected  "
                                       "[default: the backbone's own]"),
        click.option("--alpha", type=click.FloatRange(0, min_open=True),
                     help="Width multiplier of mobilenet / mobilenetv2 (same as --backbone-option alpha=A)."),
        click.option("--resize", type=click.Choice(RESIZES), default=RESIZES[0], show_default=True,
                     help=f"stretch to the square input, or crop: shorter side to size / {CROP_FRACTION}, centre crop."),
        click.option("--backbone-option", "backbone_option", multiple=True, metavar="KEY=VALUE",
                     callback=lambda ctx, param, items: dict(_pairs(items)),
                     help="A constructor option of the backbone (repeatable); `featcache backbones` lists them."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def model_defaults(name: str, *models) -> str:
    """``[default: basic-cnn 50, wrn 200]``: a scratch setting's default for each model, from the library."""
    from featcache.settings import MODEL_DEFAULTS

    shown = models or MODEL_DEFAULTS
    return "[default: " + ", ".join(f"{m} {getattr(MODEL_DEFAULTS[m], name)}" for m in shown) + "]"


def make_backbone_spec(backbone, input_size, pooling, weights, alpha, resize, backbone_option):
    from featcache.backbones import make_spec

    options = {**backbone_option, **({"alpha": alpha} if alpha is not None else {})}
    return make_spec(backbone, input_size, pooling, weights, options or None, resize=resize)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="featcache", message="%(prog)s %(version)s")
@click.option("--cache-dir", envvar="FEATCACHE_CACHE", type=click.Path(file_okay=False),
              help="Cache root (default ./cache, or $FEATCACHE_CACHE).")
@click.option("--verbose", is_flag=True, help="Also show TensorFlow's own log lines.")
@click.pass_context
def main(ctx, cache_dir, verbose):
    """Extract pretrained-backbone features once, then fit and compare heads on them."""
    if verbose:
        os.environ["FEATCACHE_VERBOSE"] = "1"  # read when featcache.backend first loads Keras
    if cache_dir:
        os.environ["FEATCACHE_CACHE"] = cache_dir  # for what finds the root itself (the file index)
    ctx.obj = {"root": cache_dir}


@main.command()
@click.option("--dataset", default="digits", show_default=True,
              help="cifar10, cifar100, tiny-imagenet, digits, folder:PATH or synthetic[:n=..,classes=..].")
@click.option("--data-dir", type=click.Path(exists=True), help="Local copy of the dataset (CIFAR python format, tiny-imagenet-200).")
@click.option("--backbone", default="mobilenetv2", show_default=True, help="A name from `featcache backbones`.")
@backbone_options
@click.option("--batch-size", type=int,
              help=f"Images per forward pass  [default: the largest that fits the GPU; {CPU_BATCH} on a CPU]")
@click.option("--dtype", type=click.Choice(DTYPES), default=DTYPES[0], show_default=True,
              help="How features are stored.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Compute precision (mixed: bfloat16/float16 compute)  [default: mixed on a GPU, else float32]")
@click.option("--xla/--no-xla", default=None, help="Compile with XLA  [default: on a GPU]")
@click.option("--tta", type=click.Choice(TTAS), default=TTAS[0], show_default=True,
              help="Also store the features of each image mirrored left to right (flip), or only the mean of both "
                   "(flip-mean).")
@click.option("--skip-bad", is_flag=True, help="Leave out images that cannot be decoded (they are listed).")
@click.option("--force", is_flag=True, help="Extract again even if the features are cached.")
@cluster_options
@click.option("--consolidate", is_flag=True, help="Copy a sharded result (--scheduler/--workers) into one file.")
@click.pass_obj
def extract(obj, dataset, data_dir, backbone, weights, input_size, pooling, alpha, resize, backbone_option, batch_size,
            dtype, precision, xla, tta, skip_bad, force, scheduler, workers, consolidate):
    """Run a backbone once over a dataset and cache its pooled features."""
    from featcache.datasets import load_dataset

    spec = make_backbone_spec(backbone, input_size, pooling, weights, alpha, resize, backbone_option)
    data = load_dataset(dataset, data_dir, skip_bad=skip_bad)
    for note in data.notes:
        click.echo(f"note: {note}", err=True)
    options = dict(batch_size=batch_size, dtype=dtype, force=force, precision=precision, xla=xla, tta=tta)
    if scheduler is not None or workers is not None:
        from featcache.distributed import extract_distributed

        result = extract_distributed(data, spec, obj["root"], scheduler=scheduler, workers=workers, **options)
    else:
        result = extract_features(data, spec, obj["root"], **options)
    if consolidate:
        from featcache.cache import consolidate as consolidate_entry

        consolidate_entry(result.path, obj["root"])
    views = {"flip": ", each image and its flip", "flip-mean": ", each the mean of an image and its flip"}.get(tta, "")
    shapes = ", ".join(f"{split} {n:,} x {result.width}" for split, n in result.rows.items()) + views
    if result.cached:
        click.echo(f"features are cached: {result.path} ({shapes}); --force extracts again")
    else:
        done = (f"resumed {result.resumed:,} images already extracted; computed {result.computed:,}"
                if result.resumed else f"extracted {result.computed:,} images")
        rate = f" ({result.images_per_second:.0f} images/s)" if result.computed else ""
        click.echo(f"{done} in {result.seconds:.1f} s{rate}: {shapes}")
        click.echo(f"cache: {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} undecodable files:")
        for path in result.skipped:
            click.echo(f"  {path}")


@main.command()
@click.pass_obj
def demo(obj):
    """The whole job on scikit-learn's bundled digits: extract, every head in 6-fold CV + test, report."""
    from featcache.demo import run_demo

    _, _, built = run_demo(obj["root"], say=lambda line: click.echo(line, err=True))
    click.echo(built.text)
    click.echo(f"report: {built.markdown}")
    click.echo(f"        {built.html}")


@main.command()
def backbones():
    """List the backbones: input sizes, feature width, parameters, preprocessing, options, weights."""
    from featcache.backbones import describe

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    click.echo(f"{'name':<18}{'size':>5}{'min':>5}{'width':>6}{'params':>13}  {'preprocessing':<37}{'options':<11}"
               " weights")
    for row in describe():
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        click.echo(f"{row['name']:<18}{row['default_size']:>5}{row['min_size']:>5}{number(row['width'], '>6')}"
                   f"{number(row['parameters'], '>13,')}  {row['preprocessing']:<37}{options:<11} {row['weights']}")
    click.echo("hub:PRESET        a KerasHub DINOv2, ViT, CLIP or SigLIP preset: its name, a kaggle:// or hf:// handle, "
               "or a preset folder (pip install 'featcache[hub]')")


@main.group()
def cache():
    """List, inspect, verify and remove cached features."""


@cache.command("ls")
@click.pass_obj
def cache_ls(obj):
    """List cache files, newest first."""
    from featcache.cache import list_entries

    entries = list_entries(obj["root"])
    if not entries:
        click.echo("no cached features: run `featcache extract`")
        return
    click.echo(f"{'cache':<58}{'rows':>16}{'width':>7}{'MB':>9}  status")
    for e in entries:
        rows = "+".join(f"{n}" for n in e.get("rows", {}).values())
        tta = e.get("provenance", {}).get("tta", "none")
        notes = (f" ({e['shards']} shards)" if e.get("shards") else "") + (f" (tta {tta})" if tta != "none" else "")
        click.echo(f"{e['stem']:<58}{rows:>16}{e.get('width', ''):>7}{e['bytes'] / 1e6:>9.1f}  {e['status']}{notes}")


@cache.command("info")
@click.argument("ref")
@click.pass_obj
def cache_info(obj, ref):
    """Show the provenance of one cache (a path, or a prefix of its name)."""
    import json

    from featcache.cache import FeatureCache, find

    found = FeatureCache(find(ref, obj["root"]))
    click.echo(f"file: {found.path}")
    click.echo("splits: " + ", ".join(f"{s} {n:,} x {found.width} {found.dtype}" for s, n in found.rows.items()))
    click.echo("label sets: " + ", ".join(f"{k} ({len(v)} classes)" for k, v in found.class_names.items()))
    click.echo(f"tta: {found.tta}" + (f" (features: {', '.join(found.feature_sets)})" if found.flip else ""))
    if found.shard_files:
        click.echo(f"shards: {len(found.shard_files)} files in {found.shard_files[0].parent}")
    click.echo(json.dumps(found.provenance, indent=2))


@cache.command("verify")
@click.argument("refs", nargs=-1)
@click.pass_obj
def cache_verify(obj, refs):
    """Check completeness and shapes of caches (all of them by default); exit 1 on a problem."""
    from featcache.cache import find, list_entries, verify

    targets = [find(r, obj["root"]) for r in refs] or [e["path"] for e in list_entries(obj["root"])]
    failed = False
    for path in targets:
        problems = verify(path)
        failed |= bool(problems)
        click.echo(f"{path.name}: " + ("ok" if not problems else "; ".join(problems)))
    sys.exit(1 if failed else 0)


@cache.command("consolidate")
@click.argument("ref")
@click.pass_obj
def cache_consolidate(obj, ref):
    """Copy a sharded cache (extracted on a Dask cluster) into one ordinary file and remove its shard files."""
    from featcache.cache import consolidate, find

    path = consolidate(find(ref, obj["root"]), obj["root"])
    click.echo(f"consolidated: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@cache.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Remove every cache a name prefix matches without asking.")
@click.pass_obj
def cache_rm(obj, refs, yes):
    """Remove caches or unfinished extractions (a path or a whole name; a prefix asks first)."""
    from featcache.cache import matching, remove

    for ref in refs:
        paths, exact = matching(ref, obj["root"])
        if not exact and not yes:
            names = ", ".join(p.name for p in paths)
            if not sys.stdin.isatty():
                raise FeatcacheError(f"{ref!r} is a prefix of {len(paths)} cache(s) ({names}): "
                                     "give the whole name, or pass --yes to remove them all")
            if not click.confirm(f"remove {len(paths)} cache(s) matching {ref!r}: {names}?"):
                click.echo("nothing removed")
                continue
        for path in paths:
            remove(path, obj["root"])
            click.echo(f"removed {path}")


@main.command()
@click.option("--head", "head_names", default="logreg", show_default=True,
              help="A head name, a comma list, or all (see `featcache heads`).")
@click.option("--folds", type=int, default=6, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Fold seed: same seed, same folds.")
@click.option("--label", "label_set", help="Label set, e.g. fine or coarse (default: the cache's first).")
@click.option("--cache", "cache_refs", multiple=True,
              help="Cache file or a prefix of its name (default: the most recent). Repeat it to fuse caches of the "
                   "same images: their features side by side, in the order given.")
@click.option("--backbone", help="Use the most recent cache of this backbone.")
@click.option("--dataset", help="Use the most recent cache of this dataset.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", callback=key_values,
              help="Head parameter (repeatable).")
@click.option("--grid", multiple=True, metavar="NAME=V1,V2", callback=key_lists,
              help="Values to choose from by inner CV on each training fold (repeatable).")
@click.option("--test", is_flag=True, help="Also score the head refitted on all training data on the test split.")
@click.option("--sweep", is_flag=True,
              help="Choose each head's own settings by its built-in sweep on a validation slice of each training fold.")
@click.option("--shots", metavar="K1,K2,...", callback=lambda ctx, param, text: text and list(map(_value, text.split(","))),
              help="Also a learning curve: each head trained on K images per class (or all), e.g. 1,2,5,10,all.")
@click.option("--repeats", type=int, default=REPEATS, show_default=True,
              help="Seeded draws of the shots per count (the same draws for every head).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Folds fitted in parallel (-1: one per core).")
@click.option("--flip", type=click.Choice(FLIP_MODES), default=FLIP_MODES[0], show_default=True,
              help="With flip features (extract --tta flip): score each image by the mean over it and its flip "
                   "(average), also train on the flips (train), or use the plain features only (ignore).")
@cluster_options
@click.pass_obj
def fit(obj, head_names, folds, seed, label_set, cache_refs, backbone, dataset, params, grid, test, sweep, shots,
        repeats, jobs, flip, scheduler, workers):
    """Fit heads on cached features with stratified k-fold cross-validation."""
    from featcache import heads
    from featcache.cache import FeatureCache, select
    from featcache.cv import fit_heads, load_features

    names = heads.available_heads() if head_names == "all" else [h.strip() for h in head_names.split(",")]
    estimators = {name: heads.make_head(name, **params) for name in names}
    found = [FeatureCache(select(obj["root"], ref, backbone, dataset)) for ref in cache_refs or [None]]
    rows = ", ".join(f"{s} {n:,}" for s, n in found[0].rows.items())
    click.echo(f"features: {' + '.join(f.path.name for f in found)} ({rows})")
    features = load_features(found, label_set, flip=flip != "ignore")
    options = dict(sweep=sweep, shots=shots, repeats=repeats, flip=flip)
    if scheduler is not None or workers is not None:
        from featcache.distributed import fit_distributed

        saved = fit_distributed(estimators, features, grid, folds, seed, test, obj["root"], scheduler=scheduler,
                                workers=workers, **options)
    else:
        saved = fit_heads(estimators, features, grid, folds, seed, test, jobs, obj["root"], **options)
    _print_results(saved, ranked=True)
    for record in saved:
        for old in record["_replaced"]:
            click.echo(f"{record['id']} replaces the identical earlier record {old}")


def _print_results(saved, ranked=False):
    """The report's summary table of ``saved`` (best first when ``ranked``), with each record's id."""
    from featcache.report_tables import Entry, rank, summary_table

    entries = rank(saved) if ranked else [Entry(r["approach"], r) for r in saved]
    click.echo(summary_table(entries, record_ids=True).text())


def _skipped(unreadable):
    """One line on stderr per unreadable record; not fatal."""
    for _, problem in unreadable:  # the problem names the file
        click.echo(f"skipped unreadable record: {problem}", err=True)


def _training_options(command):
    """The options finetune and scratch share: data, folds, early stopping, resume."""
    options = [
        click.option("--dataset", required=True,
                     help="cifar10, cifar100, tiny-imagenet, digits, folder:PATH or synthetic[:n=..,classes=..]."),
        click.option("--data-dir", type=click.Path(exists=True), help="Local copy of the dataset."),
        click.option("--skip-bad", is_flag=True, help="Leave out images that cannot be decoded."),
        click.option("--label", "label_set", help="Label set, e.g. fine or coarse (default: the dataset's first)."),
        click.option("--folds", type=int, default=default(TrainOptions, "folds"), show_default=True,
                     help="k-fold CV before the final model (0: none; the test split scores it)."),
        click.option("--seed", type=int, default=default(TrainOptions, "seed"), show_default=True,
                     help="Folds, shuffling, initialisation."),
        click.option("--val-split", type=float, default=default(TrainOptions, "val_split"), show_default=True,
                     help="Share of training images held out for early stopping (0: none)."),
        click.option("--patience", type=int, default=default(TrainOptions, "patience"), show_default=True,
                     help="Epochs without a lower validation loss before a phase stops (0: never)."),
        click.option("--resume", is_flag=True, help="Continue the newest unfinished run with the same settings."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.option("--backbone", required=True, help="A name from `featcache backbones`.")
@backbone_options
@click.option("--unfreeze", type=int, default=default(FinetuneSettings, "unfreeze"), show_default=True,
              help="Top blocks trained in phase 2 (0: no phase 2).")
@click.option("--epochs", type=int, default=default(FinetuneSettings, "epochs"), show_default=True,
              help="Phase 1: the new head on the frozen backbone.")
@click.option("--finetune-epochs", type=int, default=default(FinetuneSettings, "finetune_epochs"), show_default=True,
              help="Phase 2: the head and the top blocks.")
@click.option("--lr", "learning_rate", type=float, default=default(FinetuneSettings, "learning_rate"),
              show_default=True, help="Adam learning rate of phase 1.")
@click.option("--finetune-lr", "finetune_learning_rate", type=float,
              default=default(FinetuneSettings, "finetune_learning_rate"), show_default=True,
              help="Adam learning rate of phase 2.")
@click.option("--batch-size", type=int, default=default(FinetuneSettings, "batch_size"), show_default=True)
@click.option("--augment/--no-augment", default=default(FinetuneSettings, "augment"), show_default=True,
              help="Random flips, shifts, rotations and zooms.")
@click.option("--init-head", "init_head_ref",
              help="Start phase 1 from this mlp head record, fitted on this backbone's cached features.")
@_training_options
@click.pass_obj
def finetune(obj, backbone, weights, input_size, pooling, alpha, resize, backbone_option, unfreeze, epochs,
             finetune_epochs, learning_rate, finetune_learning_rate, batch_size, augment, init_head_ref, dataset,
             data_dir, skip_bad, label_set, folds, seed, val_split, patience, resume):
    """Fine-tune a pretrained backbone in two phases: a new head, then the top blocks."""
    from featcache.datasets import load_dataset
    from featcache.finetune import finetune as run_finetune
    from featcache.records import load_record

    spec = make_backbone_spec(backbone, input_size, pooling, weights, alpha, resize, backbone_option)
    settings = FinetuneSettings(epochs=epochs, finetune_epochs=finetune_epochs, unfreeze=unfreeze,
                                learning_rate=learning_rate, finetune_learning_rate=finetune_learning_rate,
                                batch_size=batch_size, augment=augment)
    options = TrainOptions(folds, seed, val_split, patience)
    settings.check()  # both before the dataset is read
    options.check()
    init_head = load_record(init_head_ref, obj["root"]) if init_head_ref else None
    data = load_dataset(dataset, data_dir, skip_bad=skip_bad)
    for note in data.notes:
        click.echo(f"note: {note}", err=True)
    record = run_finetune(data, spec, settings, label_set, options, obj["root"], resume, init_head=init_head)
    _print_results([record])


@main.command()
@click.option("--model", default="basic-cnn", show_default=True, help="basic-cnn or wrn (Wide ResNet).")
@click.option("--depth", type=int, help=f"wrn depth, 6n+4  {model_defaults('depth', 'wrn')}")
@click.option("--width", type=int, help=f"wrn width multiplier  {model_defaults('width', 'wrn')}")
@click.option("--dropout", type=float,
              help=f"basic-cnn: after each block; wrn: inside each block  {model_defaults('dropout')}")
@click.option("--epochs", type=int, help=model_defaults("epochs"))
@click.option("--batch-size", type=int, help=model_defaults("batch_size"))
@click.option("--lr", "learning_rate", type=float,
              help=f"basic-cnn: Adam's; wrn: SGD's initial rate  {model_defaults('learning_rate')}")
@click.option("--input-size", type=int, help="Square input size in pixels (default: the dataset's own).")
@click.option("--augment/--no-augment", default=None, help="Random flips and shifts  [default: augment]")
@_training_options
@click.pass_obj
def scratch(obj, model, depth, width, dropout, epochs, batch_size, learning_rate, input_size, augment, dataset,
            data_dir, skip_bad, label_set, folds, seed, val_split, patience, resume):
    """Train basic-cnn or a Wide ResNet from random weights at the dataset's resolution."""
    from featcache.datasets import load_dataset
    from featcache.scratch import scratch as run_scratch
    from featcache.settings import scratch_settings

    settings = scratch_settings(model, depth=depth, width=width, dropout=dropout, epochs=epochs,
                                batch_size=batch_size, learning_rate=learning_rate, input_size=input_size,
                                augment=augment)
    options = TrainOptions(folds, seed, val_split, patience)
    options.check()  # before the dataset is read
    data = load_dataset(dataset, data_dir, skip_bad=skip_bad)
    for note in data.notes:
        click.echo(f"note: {note}", err=True)
    record = run_scratch(data, settings, label_set, options, obj["root"], resume)
    _print_results([record])


@main.command("heads")
def list_heads():
    """List the heads (built in and plugged in) and their default parameters."""
    from featcache import heads

    for name in heads.available_heads():
        defaults = heads.get_head_class(name)().get_params(deep=False)
        click.echo(f"{name:<10}" + ", ".join(f"{k}={v}" for k, v in defaults.items()))


@main.group()
def results():
    """List and remove result records."""


@results.command("ls")
@click.pass_obj
def results_ls(obj):
    """List result records, oldest first."""
    from featcache.records import scan_records

    saved, unreadable = scan_records(obj["root"])
    if saved:
        _print_results(saved)
    elif not unreadable:
        click.echo("no result records: run `featcache fit`")
    _skipped(unreadable)


@results.command("rm")
@click.argument("refs", nargs=-1)
@click.option("--incomplete", is_flag=True,
              help="Remove what killed fits left (folders without record.json that no running process owns).")
@click.option("--yes", is_flag=True, help="Remove every record a prefix matches without asking.")
@click.pass_obj
def results_rm(obj, refs, incomplete, yes):
    """Remove result records by id or id prefix, and with --incomplete the leftovers of killed fits."""
    from featcache import records

    if not refs and not incomplete:
        raise click.UsageError("give record ids or prefixes, or --incomplete")
    for ref in refs:
        folders = records.matching_folders(ref, obj["root"])
        if not folders:
            raise FeatcacheError(f"no result record matches {ref!r}: list them with `featcache results ls`")
        if len(folders) > 1 and not yes and not _confirm(f"remove the {len(folders)} records matching {ref!r}: "
                                                         f"{', '.join(f.name for f in folders)}?"):
            raise FeatcacheError(f"{len(folders)} records match {ref!r}; nothing removed: give the whole id, "
                                 "or --yes to remove them all")
        for folder in folders:
            records.remove_folder(folder)
            click.echo(f"removed {folder.name}")
    if incomplete:
        removed = records.remove_leftovers(obj["root"])
        click.echo(f"removed {len(removed)} leftover folders of killed fits" + "".join(f"\n  {f}" for f in removed))


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (no terminal) is no."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        return False


@main.command()
@click.argument("record_refs", nargs=-1)
@click.option("--dataset", help="Only records of this dataset (name or fingerprint).")
@click.option("--backbone", help="Only records of this backbone.")
@click.option("--label", "label_set", help="Only records of this label set.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default <cache>/reports).")
@click.option("--strict", is_flag=True, help="Refuse records of different datasets, label sets or folds.")
@click.pass_obj
def report(obj, record_refs, dataset, backbone, label_set, out_dir, strict):
    """Write the Markdown and HTML comparison report of result records (all of them by default)."""
    from pathlib import Path

    from featcache import paths
    from featcache.records import load_record, scan_records
    from featcache.report import build_report, select_records

    if record_refs:
        chosen = [load_record(r, obj["root"]) for r in record_refs]
    else:
        chosen, unreadable = scan_records(obj["root"])
        _skipped(unreadable)
    if chosen and (dataset or backbone or label_set):
        chosen = select_records(chosen, dataset, backbone, label_set)
    built = build_report(chosen, Path(out_dir) if out_dir else paths.reports_dir(obj["root"]), strict=strict)
    click.echo(built.text)
    click.echo(f"report: {built.markdown}")
    click.echo(f"        {built.html}")


@main.command()
@click.option("--result", "record_ref", default="best", show_default=True,
              help="A record id or folder, or best (highest CV accuracy).")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--dataset", help="With --result best: only records of this dataset.")
@click.option("--label", "label_set", help="With --result best: only records of this label set.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True,
              help="Classes per image, at most the record's class count.")
@click.option("--out", "out_csv", type=click.Path(dir_okay=False), default="predictions.csv", show_default=True,
              help="CSV of every image's top-k classes and probabilities.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave out images that cannot be decoded (they are listed).")
@click.option("--show", type=click.IntRange(0), default=20, show_default=True, help="Images to print in the table.")
@click.pass_obj
def predict(obj, record_ref, inputs, dataset, label_set, top_k, out_csv, batch_size, skip_bad, show):
    """Classify images (files, folders or glob patterns) with a result record's model."""
    from pathlib import Path

    from featcache.predict import check_output, choose_record, collect_images, predict as run_predict, ranks, write_csv

    check_output(Path(out_csv))
    images = collect_images(inputs)
    record = choose_record(record_ref, obj["root"], dataset, label_set, _skipped)
    if record_ref == "best":
        accuracy = record["cv"]["summary"]["accuracy"]["mean"] * 100
        click.echo(f"best record: {record['id']} ({record['approach']}, CV accuracy {accuracy:.2f}%)")
    predictions, skipped = run_predict(record, images, top_k, batch_size, skip_bad)
    count = 0
    for count, p in enumerate(write_csv(predictions, Path(out_csv), ranks(record, top_k)), start=1):
        if count <= show:
            ranked = "  ".join(f"{c} {q * 100:.1f}%" for c, q in zip(p.classes, p.probabilities))
            click.echo(f"{str(p.path):<50} {ranked}")
    if count > show:
        click.echo(f"... and {count - show:,} more")
    click.echo(f"{count:,} predictions written to {out_csv}")
    for path in skipped:
        click.echo(f"skipped (cannot decode): {path}")


@main.command()
@click.option("--result", "record_ref", required=True, help="A record id or folder.")
@click.option("--dataset", required=True,
              help="A labelled dataset the model never saw: folder:PATH, cifar10, ... (its test split when it has one, "
                   "else every image).")
@click.option("--data-dir", type=click.Path(exists=True), help="Local copy of the dataset (CIFAR python format, tiny-imagenet-200).")
@click.option("--label", "label_set", help="The dataset's label set (default: the record's, else the dataset's first).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.pass_obj
def evaluate(obj, record_ref, dataset, data_dir, label_set, batch_size):
    """Score a record's model on a labelled dataset it never saw; save the scores as an evaluation record."""
    from featcache.datasets import load_dataset
    from featcache.evaluate import evaluate as run_evaluate
    from featcache.records import load_record

    record = load_record(record_ref, obj["root"])
    data = load_dataset(dataset, data_dir)
    _print_results([run_evaluate(record, data, label_set, batch_size, obj["root"])])


@main.command()
@click.option("--result", "record_ref", default="best", show_default=True, help="A record id or folder, or best.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="A new, empty folder.")
@click.option("--dataset", help="With --result best: only records of this dataset.")
@click.option("--label", "label_set", help="With --result best: only records of this label set.")
@click.pass_obj
def export(obj, record_ref, out_dir, dataset, label_set):
    """Write a record's model as a folder that loads without the cache: featcache.load_model(DIR)."""
    from featcache.export import check_empty, export as run_export
    from featcache.predict import choose_record

    check_empty(out_dir)
    record = choose_record(record_ref, obj["root"], dataset, label_set, _skipped)
    folder = run_export(record, out_dir)
    click.echo(f"exported {record['approach']} ({record['id']}) to {folder}")
    click.echo(f"load it with: featcache.load_model({str(folder)!r}).predict_proba(images)")


if __name__ == "__main__":
    main()
