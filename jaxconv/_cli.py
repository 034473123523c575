"""The `jaxconv` command line: `jaxconv bench` (the benchmarks), `jaxconv tune` (the tuning cache)
and `jaxconv demo` (the seed)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `jaxconv` console script.

  Example:
    >>> main(["bench", "--list", "--shapes", "tiny"])
    tiny                     2x16x16x3 -> 4, 3x3, SAME                    tiny,float32
    0
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog="jaxconv", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  bench = sub.add_parser(
    "bench",
    help="time every algorithm against lax on the shape table; table, JSON and figures",
    description="Times lax.conv_general_dilated and jaxconv's algorithms side by side on the "
    "benchmark shape table; prints a table and writes bench.json, bench.md and PNG figures.",
  )
  tune = sub.add_parser(
    "tune",
    help="measure the benchmark table's layers into the tuning cache; --show, --clear",
    description="Measures every candidate algorithm on the benchmark table's layers and stores "
    "the results in jaxconv's tuning cache, which `auto` then uses; --show lists the cache and "
    "--clear deletes it.",
  )
  demo = sub.add_parser(
    "demo",
    help="the seed example on real photographs: numpy im2col, jaxconv and lax side by side",
  )
  # Imported here so that `jaxconv --help` stays fast.
  from jaxconv import _bench, _demo, _host_memory, _tune_cli

  _bench.add_arguments(bench)
  _tune_cli.add_arguments(tune)
  _demo.add_arguments(demo)
  for p in (bench, tune):
    _host_memory.add_option(p)
  args = parser.parse_args(argv)
  _host_memory.apply_option(args)
  if args.command == "bench":
    return _bench.main(args, argv)
  if args.command == "tune":
    return _tune_cli.main(args)
  return _demo.main(args)


if __name__ == "__main__":
  sys.exit(main())
