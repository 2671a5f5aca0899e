"""The Dataflow flex template's entry point: `loom ingest` on Beam with pipeline options.

Dataflow's launcher runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE) with the template's
parameters and its own pipeline options as flags:

    python -m loom.pipelines.beam.flex --input=gs://B/raw --output=gs://B/examples \\
        --image_size=48 --runner=DataflowRunner --project=P --region=R ...

The parameters are `loom ingest`'s options under their flag names (`--image_size` and the
CLI's `--image-size` both work: template parameter names cannot hold a dash); every other
flag is a Beam pipeline option, applied to each Beam stage of the ingest. The last stdout
line is the stage's JSON, as from the CLI; exit 2 on bad input, 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import sys

PARAMETERS = ("input", "output", "image_size", "allow_host")  # = flex-template.json's


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """(ingest parameters, Beam pipeline options)."""
    from loom.pipelines.beam.options import from_args

    p = argparse.ArgumentParser(prog="loom-flex-ingest", allow_abbrev=False)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--image_size", "--image-size", dest="image_size", type=int, default=48)
    p.add_argument("--allow_host", "--allow-host", dest="allow_host", action="append",
                   default=[], help="host whose http(s) references may be fetched; commas "
                   "separate several (a template parameter is one string)")
    args, rest = p.parse_known_args(argv)
    args.allow_host = [h for v in args.allow_host for h in v.split(",") if h]
    return args, from_args(rest)


def main(argv: list[str] | None = None) -> int:
    from loom.pipelines.common import BadInput
    from loom.pipelines.engine import BeamOptions, Engine, EngineOptions
    from loom.pipelines.ingest import run_ingest
    from loom.schemas.spec import PreprocessingSpec
    from loom.transforms.remote import RemoteConfig

    args, options = parse(sys.argv[1:] if argv is None else argv)
    try:
        engine = EngineOptions(kind=Engine.BEAM, beam=BeamOptions(options=options))
        out = run_ingest(args.input, args.output, PreprocessingSpec(image_size=args.image_size),
                         engine, remote=RemoteConfig(allowed_hosts=tuple(args.allow_host)))
    except BadInput as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
