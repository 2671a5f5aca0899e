"""Pairs from structure (`loom pairs`): natural pairs of an examples dataset, no LLM.

Rules (transforms.natural_pairs): a record's text with each of its images, audio or video
(a WebDataset sample's jpg + txt is such a record), a video with its own audio track, a
PDF page's rendering with its text layer, a passage's title with its body. With `mix`,
the rows of other pairs datasets (synth's) are copied in beside them, so one dataset
holds natural and synthetic pairs and `loom shard --weight natural=0.5` tilts the mix
by `source`.
"""

from __future__ import annotations

import collections

from loom.pipelines.common import BadInput, result, reuse, timed
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import PAIR, pair_name, rows_of, to_table
from loom.transforms.natural_pairs import RULES, natural_pairs

ROWS_PER_PART = 8192


def run_pairs(examples_uri: str, output_root: str, rules: tuple[str, ...] = RULES,
              heldout_fraction: float = 0.2, mix: tuple[str, ...] = ()) -> dict:
    """Natural pairs of every Example (and the rows of the `mix` pairs datasets)."""
    examples_uri, output_root = storage.absolute(examples_uri), storage.absolute(output_root)
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise BadInput(f"unknown natural-pair rules {unknown} (have {list(RULES)})")
    ex_dir, ex_manifest = mf.resolve_input(examples_uri)
    if "examples" not in ex_manifest.tables:
        raise BadInput(f"{ex_dir} is not an examples dataset")
    mixed = [mf.resolve_input(storage.absolute(u)) for u in mix]
    for d, m in mixed:
        if "pairs" not in m.tables:
            raise BadInput(f"{d} is not a pairs dataset")
        if m.lineage.get("examples_version", ex_manifest.version) != ex_manifest.version:
            raise BadInput(f"{d} pairs another examples version than {ex_dir}")
    config = {"rules": sorted(rules), "heldout_fraction": heldout_fraction}
    version = mf.version_id("pairs", [ex_manifest.version, *(m.version for _, m in mixed)],
                            config)
    writer = mf.VersionWriter(output_root, "pairs", version)
    if (done := reuse(writer, "pairs")) is not None:
        return done
    timings: dict[str, float] = {}
    with timed(timings, "pairs_s"):
        rows = []
        for part in mf.read_table_parts(ex_dir, ex_manifest, "examples"):  # one file held
            for ex in rows_of(part):  # features stay float16 arrays
                rows += natural_pairs(ex, tuple(rules), heldout_fraction)
        n_natural = len(rows)
        for d, m in mixed:
            rows += rows_of(mf.read_table(d, m, "pairs"))
        rows.sort(key=lambda r: r["pair_id"])
        files = [writer.write_part("pairs", f"part-{i // ROWS_PER_PART:05d}",
                                   to_table(rows[i : i + ROWS_PER_PART], PAIR))
                 for i in range(0, len(rows), ROWS_PER_PART)]
    by_pair = collections.Counter(pair_name(r["query_modality"], r["positive_modality"])
                                  + (":natural" if r.get("source") == "natural" else "")
                                  for r in rows)
    counts = {"pairs": len(rows), "natural": n_natural, "mixed": len(rows) - n_natural,
              "heldout_pairs": sum(r["split"] == "heldout" for r in rows),
              "examples": ex_manifest.rows("examples")}
    counts |= {f"pairs.{k}": v for k, v in sorted(by_pair.items())}
    lineage = {"examples": ex_dir, "examples_version": ex_manifest.version,
               "mix": [d for d, _ in mixed], "timings": timings}
    manifest = writer.commit({"pairs": files}, counts, config, lineage)
    return result("pairs", manifest, writer.dir, False, timings=timings)
