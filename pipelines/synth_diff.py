"""`loom synth diff OLD NEW`: what a regeneration changed, per query kind."""

from __future__ import annotations

from loom.schemas import manifest as mf
from loom.schemas import storage


def _keyed(version_uri: str) -> dict[tuple[str, str, int], str]:
    """(positive id, kind, n-th query of that pair of positive and kind) -> query text.

    pair_ids hash the prompt version, so they change with a prompt; this key does not.
    """
    vdir, manifest = mf.resolve_input(storage.absolute(version_uri))
    rows = mf.read_table(vdir, manifest, "pairs",
                         columns=["pair_id", "positive_id", "kind", "query_text"]).to_pylist()
    rows.sort(key=lambda r: (r["positive_id"], r["kind"], r["pair_id"]))
    out: dict[tuple[str, str, int], str] = {}
    seen: dict[tuple[str, str], int] = {}
    for r in rows:
        n = seen.get((r["positive_id"], r["kind"]), 0)
        seen[(r["positive_id"], r["kind"])] = n + 1
        out[(r["positive_id"], r["kind"], n)] = r["query_text"]
    return out


def diff_synth(old_uri: str, new_uri: str) -> dict:
    """Rows added, removed, rewritten and unchanged, per kind and in total."""
    old, new = _keyed(old_uri), _keyed(new_uri)
    per_kind: dict[str, dict[str, int]] = {}

    def bump(kind: str, what: str) -> None:
        d = per_kind.setdefault(kind, {"added": 0, "removed": 0, "rewritten": 0,
                                       "unchanged": 0})
        d[what] += 1

    for key in old.keys() | new.keys():
        kind = key[1]
        if key not in old:
            bump(kind, "added")
        elif key not in new:
            bump(kind, "removed")
        else:
            bump(kind, "rewritten" if old[key] != new[key] else "unchanged")
    total = {k: sum(d[k] for d in per_kind.values())
             for k in ("added", "removed", "rewritten", "unchanged")}
    return {"stage": "synth_diff", "old": old_uri, "new": new_uri,
            "kinds": dict(sorted(per_kind.items())), "counts": total}
