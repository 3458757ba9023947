"""The `featcache` command line: parses options and calls the library, nothing more."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import click

from featcache.errors import FeatcacheError


class Group(click.Group):
    """Turns FeatcacheError into a one-line message and exit status 2, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatcacheError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Group)
@click.option("--cache-dir", envvar="FEATCACHE_CACHE", type=click.Path(file_okay=False),
              help="Cache root (default ./cache, or $FEATCACHE_CACHE).")
@click.pass_context
def main(ctx, cache_dir):
    """Extract pretrained-backbone features once, then fit and compare heads on them."""
    ctx.obj = {"root": cache_dir}


@main.command()
@click.option("--dataset", default="digits", show_default=True,
              help="cifar10, cifar100, tiny-imagenet, digits, folder:PATH or synthetic[:n=..,classes=..].")
@click.option("--data-dir", type=click.Path(exists=True), help="Local copy of the dataset (CIFAR python format, tiny-imagenet-200).")
@click.option("--backbone", default="mobilenetv2", show_default=True, help="A name from `featcache backbones`.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none (random), or a weights file.")
@click.option("--input-size", type=int, help="Square input size in pixels (default: the backbone's).")
@click.option("--pooling", type=click.Choice(["avg", "max"]), default="avg", show_default=True)
@click.option("--alpha", type=float, help="Width multiplier of mobilenet / mobilenetv2.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave out images that cannot be decoded (they are listed).")
@click.option("--force", is_flag=True, help="Extract again even if the features are cached.")
@click.pass_obj
def extract(obj, dataset, data_dir, backbone, weights, input_size, pooling, alpha, batch_size, dtype, skip_bad, force):
    """Run a backbone once over a dataset and cache its pooled features."""
    from featcache.backbones import make_spec
    from featcache.datasets import load_dataset
    from featcache.extract import extract as run_extract

    spec = make_spec(backbone, input_size, pooling, weights, {"alpha": alpha} if alpha is not None else None)
    data = load_dataset(dataset, data_dir, skip_bad=skip_bad)
    result = run_extract(data, spec, obj["root"], batch_size=batch_size, dtype=dtype, force=force)
    shapes = ", ".join(f"{split} {n:,} x {result.width}" for split, n in result.rows.items())
    if result.cached:
        click.echo(f"features are cached: {result.path} ({shapes}); --force extracts again")
    else:
        click.echo(f"extracted {sum(result.rows.values()):,} images in {result.seconds:.1f} s "
                   f"({result.images_per_second:.0f} images/s): {shapes}")
        click.echo(f"cache: {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} undecodable files:")
        for path in result.skipped:
            click.echo(f"  {path}")


@main.command()
def backbones():
    """List the backbones and their defaults."""
    from featcache.backbones import BACKBONES

    click.echo(f"{'name':<16}{'size':>6}{'min':>6}{'width':>7}  options")
    for b in BACKBONES.values():
        options = ", ".join(f"{k}={v}" for k, v in b.options.items())
        click.echo(f"{b.name:<16}{b.default_size:>6}{b.min_size:>6}{b.feature_width:>7}  {options}")


@main.group(cls=Group)
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
        click.echo(f"{e['stem']:<58}{rows:>16}{e.get('width', ''):>7}{e['bytes'] / 1e6:>9.1f}  {e['status']}")


@cache.command("info")
@click.argument("ref")
@click.pass_obj
def cache_info(obj, ref):
    """Show the provenance of one cache (a path, or a prefix of its name)."""
    import json

    from featcache.cache import FeatureCache, find

    found = FeatureCache(find(ref, obj["root"]))
    click.echo(f"file: {found.path}")
    click.echo(f"splits: " + ", ".join(f"{s} {n:,} x {found.width} {found.dtype}" for s, n in found.rows.items()))
    click.echo("label sets: " + ", ".join(f"{k} ({len(v)} classes)" for k, v in found.class_names.items()))
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


@cache.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def cache_rm(obj, refs):
    """Remove caches or unfinished extractions."""
    from featcache.cache import find, remove

    for ref in refs:
        path = find(ref, obj["root"])
        remove(path, obj["root"])
        click.echo(f"removed {path}")


if __name__ == "__main__":
    main()
