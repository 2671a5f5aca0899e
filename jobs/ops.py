"""Operating the data: `loom ls`, `loom inspect` and `loom gc` over dataset roots.

A *dataset root* holds versions (`<root>/<stage>-<hash>/manifest.json`); a *workdir* holds
dataset roots (`<workdir>/examples`, `<workdir>/pairs`, ...). Lineage is read from the
manifests alone: a version depends on another when any string in its lineage names that
version's folder (or a path inside it) or its id. `previous` / `reused_from` only say what a
version replaced or copied from, so they are not dependencies.

gc keeps the newest N versions per (root, stage), every version a kept version or a
checkpoint run depends on (transitively), and deletes the rest plus partial writes: folders
with a version-shaped name and no manifest, untouched for longer than a grace period.
A version is deleted manifest first, so readers never see a half-deleted version.
Versions `loom forget` replaced (named in a newer version's `takedown`) are deleted
whatever keeps them. Leftovers inside complete versions (a killed run's temp files, a `_work/` folder that was
never cleaned) are listed by ls and deleted by gc past the same grace period.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import posixpath
import re
import time
from collections.abc import Iterator

from loom.schemas import manifest as mf
from loom.schemas import storage

log = logging.getLogger("loom.ops")

# Stages that finish by writing manifest.json (corpus and report mark completion otherwise).
MANIFEST_STAGES = ("ingest", "synth", "shard", "mine", "eval", "backfill")
# a version folder without its manifest yet, or an ingest's listing before it is moved
# into its version (`ingest_listing.write_listing`): a killed run leaves either behind
PARTIAL_NAME = re.compile(rf"^(({'|'.join(MANIFEST_STAGES)})-[0-9a-f]{{16}}"
                          rf"|{re.escape(mf.LISTING_PREFIX)}[0-9a-f]{{32}})$")
NOT_DEPENDENCIES = frozenset({"previous", "reused_from", "takedown"})
DEFAULT_GRACE_S = 6 * 3600


@dataclasses.dataclass
class VersionInfo:
    root: str
    uri: str
    manifest: mf.Manifest
    bytes: int
    files: int
    leftovers: list[storage.FileEntry] = dataclasses.field(default_factory=list)

    @property
    def version(self) -> str:
        return self.manifest.version

    def to_json(self, depends_on: list[str] | None = None) -> dict:
        m = self.manifest
        return {"root": self.root, "uri": self.uri, "version": m.version, "stage": m.stage,
                "created_at": m.created_at, "bytes": self.bytes, "files": self.files,
                "rows": {t: m.rows(t) for t in m.tables}, "counts": m.counts,
                "depends_on": depends_on or [],
                "leftovers": [e.uri for e in self.leftovers]}


@dataclasses.dataclass
class Partial:
    root: str
    uri: str
    bytes: int
    age_s: float


@dataclasses.dataclass
class Scan:
    versions: list[VersionInfo]
    partials: list[Partial]
    # References from things that are not versions but must survive (checkpoint runs).
    external_refs: list[str]


def _name(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def _parent(uri: str) -> str:
    parent = posixpath.dirname(uri.rstrip("/"))
    return parent if parent not in ("", "gs:") else uri


def _strings(value, key: str | None = None) -> Iterator[str]:
    if key in NOT_DEPENDENCIES:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _size(uri: str) -> tuple[int, int, int]:
    """(bytes, files, newest mtime in ns) of everything under a folder."""
    entries = storage.list_files(uri)
    return (sum(e.size for e in entries), len(entries),
            max((e.mtime_ns for e in entries), default=0))


def _holds_versions(uri: str) -> bool:
    return any(storage.exists(storage.join(c, mf.MANIFEST)) or PARTIAL_NAME.match(_name(c))
               for c in storage.list_dirs(uri))


def dataset_roots(uri: str) -> list[str]:
    """uri itself when it holds versions (or partial writes), else its child folders that do;
    with each, the stage-private roots nested in it (a backfill's `_ingest/`), whose
    versions are kept only while something newer uses them."""
    uri = storage.absolute(uri)
    roots = [uri] if _holds_versions(uri) else [c for c in storage.list_dirs(uri)
                                                 if _holds_versions(c)]
    return [r for root in roots for r in (root, *(c for c in storage.list_dirs(root)
                                                  if _name(c).startswith("_")
                                                  and _holds_versions(c)))]


def scan(uri: str, now: float | None = None, context: bool = True) -> Scan:
    """Every version and partial write under uri's dataset roots.

    With `context`, a single dataset root's sibling roots are read too (manifests only), so
    a version that a sibling (pairs -> examples) depends on is seen as a dependency.
    """
    now = time.time() if now is None else now
    uri = storage.absolute(uri)
    roots = dataset_roots(uri)
    versions, partials, external = [], [], []
    for root in roots:
        for d in storage.list_dirs(root):
            m = mf.read_manifest(d)
            if m is not None:
                size, files, _ = _size(d)
                versions.append(VersionInfo(root, d, m, size, files, mf.leftovers(d)))
            elif PARTIAL_NAME.match(_name(d)):
                size, _, newest = _size(d)
                partials.append(Partial(root, d, size, now - newest / 1e9 if newest else 0.0))
    scope = [_parent(uri)] if context and roots == [uri] else [uri]
    for top in scope:
        for child in storage.list_dirs(top):
            if child in roots:
                continue
            for d in storage.list_dirs(child):
                m = mf.read_manifest(d)
                if m is not None:
                    external += list(_strings(m.lineage))
                lineage = storage.join(d, "lineage.json")  # a checkpoint run
                if storage.exists(lineage):
                    external += list(_strings(json.loads(storage.read_bytes(lineage))))
    return Scan(versions, partials, external)


def _refers(strings: list[str], target: VersionInfo) -> bool:
    uri = target.uri.rstrip("/")
    return any(s == target.version or s.rstrip("/") == uri or s.startswith(uri + "/")
               for s in strings)


def dependencies(s: Scan) -> dict[str, list[str]]:
    """version uri -> uris of the scanned versions its lineage names."""
    out = {}
    for v in s.versions:
        strings = list(_strings(v.manifest.lineage))
        out[v.uri] = [t.uri for t in s.versions if t is not v and _refers(strings, t)]
    return out


def _version_dirs_named(m: mf.Manifest) -> list[str]:
    """Lineage values that are themselves complete version folders (in any root)."""
    return sorted({v for v in _strings(m.lineage) if "/" in v
                   and storage.exists(storage.join(v, mf.MANIFEST))})


def list_versions(uri: str) -> dict:
    s = scan(uri)
    deps = dependencies(s)
    for v in s.versions:
        deps[v.uri] = sorted(set(deps[v.uri]) | set(_version_dirs_named(v.manifest)))
    versions = sorted(s.versions, key=lambda v: (v.root, v.manifest.created_at, v.uri))
    return {"stage": "ls", "root": storage.absolute(uri),
            "versions": [v.to_json(deps[v.uri]) for v in versions],
            "partials": [dataclasses.asdict(p) for p in s.partials],
            "counts": {"versions": len(versions), "partials": len(s.partials),
                       "leftovers": sum(len(v.leftovers) for v in versions),
                       "bytes": sum(v.bytes for v in versions) + sum(p.bytes for p in s.partials)}}


def inspect_version(uri: str) -> dict:
    """A version's manifest and the chain of versions its lineage names (read from there)."""
    version_dir, m = mf.resolve_input(storage.absolute(uri))
    size, files, _ = _size(version_dir)
    chain: list[dict] = []
    seen = {version_dir}
    frontier = [(version_dir, m)]
    while frontier:
        d, man = frontier.pop(0)
        for key, value in man.lineage.items():
            if key in NOT_DEPENDENCIES or not isinstance(value, str) or value in seen:
                continue
            if "/" not in value or not storage.exists(storage.join(value, mf.MANIFEST)):
                continue
            seen.add(value)
            up = mf.read_manifest(value)
            chain.append({"of": man.version, "via": key, "uri": value, "version": up.version,
                          "stage": up.stage, "created_at": up.created_at})
            frontier.append((value, up))
    return {"stage": "inspect", "uri": version_dir, "version": m.version, "bytes": size,
            "files": files, "manifest": json.loads(m.to_json()), "lineage_chain": chain}


def gc_plan(uri: str, keep: int, grace_s: float = DEFAULT_GRACE_S,
            now: float | None = None) -> dict:
    """What gc would delete, and why everything else stays."""
    if keep < 1:
        raise ValueError("--keep must be at least 1")
    s = scan(uri, now)
    deps = dependencies(s)
    groups: dict[tuple[str, str], list[VersionInfo]] = {}
    for v in s.versions:
        groups.setdefault((v.root, v.manifest.stage), []).append(v)
    reason: dict[str, str] = {}
    for members in groups.values():
        members.sort(key=lambda v: (v.manifest.created_at, v.uri), reverse=True)
        for v in members[:keep]:
            reason[v.uri] = f"newest {keep}"
    for v in s.versions:
        if v.uri not in reason and _refers(s.external_refs, v):
            reason[v.uri] = "used outside this root"
    changed = True
    while changed:  # whatever a survivor depends on survives
        changed = False
        for v in s.versions:
            if v.uri in reason:
                for dep in deps[v.uri]:
                    if dep not in reason:
                        reason[dep] = f"used by {v.version}"
                        changed = True
    taken_down = {u for v in s.versions  # `loom forget` replaced them: they must go
                  for u in (v.manifest.lineage.get("takedown") or {}).get("replaces", [])}
    for v in s.versions:
        if v.uri in taken_down:
            reason.pop(v.uri, None)
    delete = [v for v in s.versions if v.uri not in reason]
    stale = [p for p in s.partials if p.age_s >= grace_s]
    now_ns = (time.time() if now is None else now) * 1e9
    leftovers = [e for v in s.versions if v.uri in reason for e in v.leftovers
                 if now_ns - e.mtime_ns >= grace_s * 1e9]
    return {
        "stage": "gc", "root": storage.absolute(uri), "keep": keep, "grace_s": grace_s,
        "delete": [{"uri": v.uri, "version": v.version, "stage": v.manifest.stage,
                    "created_at": v.manifest.created_at, "bytes": v.bytes} for v in delete]
                  + [{"uri": p.uri, "partial": True, "age_s": round(p.age_s), "bytes": p.bytes}
                     for p in stale]
                  + [{"uri": e.uri, "leftover": True, "bytes": e.size} for e in leftovers],
        "keep_versions": [{"uri": v.uri, "version": v.version, "why": reason[v.uri]}
                          for v in s.versions if v.uri in reason],
        "young_partials": [p.uri for p in s.partials if p.age_s < grace_s],
        "counts": {"versions": len(s.versions), "delete_versions": len(delete),
                   "delete_partials": len(stale), "delete_leftovers": len(leftovers),
                   "delete_bytes": sum(v.bytes for v in delete) + sum(p.bytes for p in stale)
                   + sum(e.size for e in leftovers)},
    }


def gc(uri: str, keep: int, dry_run: bool = True, grace_s: float = DEFAULT_GRACE_S,
       log_line=print) -> dict:
    plan = gc_plan(uri, keep, grace_s)
    for item in plan["delete"]:
        what = ("partial write" if item.get("partial") else "leftover file"
                if item.get("leftover") else f"{item['stage']} {item['created_at']}")
        log_line(f"{'would delete' if dry_run else 'delete'} {item['uri']}  ({what}, "
                 f"{item['bytes']} bytes)")
    for item in plan["keep_versions"]:
        log_line(f"keep {item['uri']}  ({item['why']})")
    if not dry_run:
        for item in plan["delete"]:
            if not item.get("partial") and not item.get("leftover"):  # invisible first
                storage.delete(storage.join(item["uri"], mf.MANIFEST))
            storage.delete(item["uri"])
            log.info("deleted %s", item["uri"], extra={"uri": item["uri"]})
    plan["dry_run"] = dry_run
    plan["counts"]["deleted"] = 0 if dry_run else len(plan["delete"])
    return plan


def format_ls(out: dict) -> str:
    """A terminal table; the JSON object is still the last line."""
    lines = []
    for v in out["versions"]:
        rows = ", ".join(f"{t}={n}" for t, n in v["rows"].items())
        lines.append(f"{v['version']:<26} {v['created_at'][:19]:<19} {_human(v['bytes']):>9}  "
                     f"{rows}")
        for d in v["depends_on"]:
            lines.append(f"  <- {d}")
        for f in v.get("leftovers", []):
            lines.append(f"  leftover {f}  (loom gc removes it)")
    for p in out["partials"]:
        lines.append(f"{_name(p['uri']):<26} {'(partial write)':<19} {_human(p['bytes']):>9}  "
                     f"age {dt.timedelta(seconds=int(p['age_s']))}")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"
