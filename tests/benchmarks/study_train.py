"""Study (issue 6): do mined hard negatives beat continued in-batch training, do Matryoshka
losses beat plain truncation, does a soup beat its best ingredient?

    .venv/bin/python tests/benchmarks/study_train.py --workdir /tmp/loom-study \
        [--images 1000 --texts 1000 --heldout 0.5 --seeds 0 1 2 --pft-epochs 12 --ft-epochs 4]

World: `generate_corpus(world="rich")`: one- and two-object scenes (12 colors, 6 shapes,
3 sizes, 9 cells) in near-miss families (one attribute changed, attributes swapped between
the two objects), so a query's nearest wrong answers are compositional near-misses that a
random in-batch negative rarely is. The offline LLM writes the queries from the pixels and
passages; eval scores a hit on any held-out asset of the query's exact scene.

Per seed s (the pft run's seed; every later run of that seed starts from its weights):
- pft: stage 1 on the pairs, Matryoshka sizes 32/64/128; held-out R@1 at every checkpoint
  (the plateau curve);
- mine with the pft checkpoint (PercPos 0.95), and once with no false-negative rule, to
  measure what the filter removes; hardness of what was kept from the ground truth (same
  family = a true near-miss; same scene = a false negative);
- ft: hard negatives, `--init pft`; ctrl: continue pft on the pairs for the same steps;
  ctrl_wall: continue pft for as long as ft took (its step time, measured);
- re-mine with the ft checkpoint, ft2 from ft; beside it ctrl2 from ctrl, same steps;
- nomrl: stage 1 without Matryoshka losses (one 128 size), evaluated truncated to 32/64;
- first seed only: ft_unfiltered, the same ft on negatives mined with no false-negative rule.
Soup (right after seed 0's arm): ft from seed 0's pft with ft shards shuffled by seeds 0, 1,
2, uniform soup vs best ingredient.

Multimodal (issue 14): `--world multimodal` runs the same chain on the multimodal world
(images, texts, 6 s videos, audio clips, PDF pages and interleaved records at 48 px) with
loom's natural pairs mixed into the synthetic ones, and cuts the arms to pft, ft and ctrl
(continued pft for as many steps as ft took, not as many epochs):

    .venv/bin/python tests/benchmarks/study_train.py --workdir /work/study-mm \
        --world multimodal --images 960 --texts 960 --media 640 --video-audio 1.0 \
        --heldout 0.6 --seeds 0 1 2 --pft-epochs 4 --ft-epochs 2

(`--media 640 --video-audio 1.0 --heldout 0.6`: 640 videos, all with an audio track, 640
audio clips, 640 PDF pages and 640 records, 60% of the asset groups held out, so every
natural pair, one per held-out asset, has >= 300 queries.)

The summary is per modality pair: random, untrained, pft, ctrl and ft R@1 over the seeds,
whether ft clears max(random, untrained) by 3x random on every seed, and ft - ctrl as
paired differences.

Every stage is loom's own (ingest, synth, shard, train on Ray Train, mine, soup, eval); runs
are content-addressed, so a rerun of a killed study reuses what finished (run it in parts:
`--seeds 0`, then `--seeds 0 1`, ...). Results go to <workdir>/study.json and
<workdir>/study.md. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.jobs.corpus import generate_corpus  # noqa: E402
from loom.pipelines.evaluate import run_eval  # noqa: E402
from loom.pipelines.ingest import run_ingest  # noqa: E402
from loom.pipelines.mine import run_mine  # noqa: E402
from loom.pipelines.pairs import run_pairs  # noqa: E402
from loom.pipelines.shard import run_shard  # noqa: E402
from loom.pipelines.soup import run_soup  # noqa: E402
from loom.pipelines.synth import run_synth  # noqa: E402
from loom.pipelines.train import TrainConfig, TrainStage, run_train  # noqa: E402
from loom.schemas import manifest as mf  # noqa: E402
from loom.schemas import storage  # noqa: E402
from loom.transforms.mining import MiningConfig  # noqa: E402

PAIRS = ("text->image", "text->text")


class Study:
    def __init__(self, args):
        self.args = args
        self.w = storage.absolute(args.workdir)
        self.ckpts = storage.join(self.w, "checkpoints")
        self.out: dict = {"args": vars(args), "runs": {}, "mining": {}, "curves": {}}
        self.t0 = time.perf_counter()
        self.cont = {"lr": args.ft_lr, "warmup_steps": 5}  # every run that starts from weights

    def log(self, msg: str) -> None:
        print(f"[study {time.perf_counter() - self.t0:7.0f}s] {msg}", flush=True)

    def save(self) -> None:
        storage.write_atomic(storage.join(self.w, "study.json"),
                             json.dumps(self.out, indent=1, default=str).encode())

    # -- stages -------------------------------------------------------------------------
    def data(self) -> None:
        a = self.args
        corpus = storage.join(self.w, "corpus")
        if not storage.exists(storage.join(corpus, "ground_truth.jsonl")):
            world = {} if a.world == "simple" else {"world": a.world}  # simple: a smoke test
            if a.world == "multimodal":
                world |= {"media": a.media, "video_audio": a.video_audio}
            generate_corpus(corpus, a.images, a.texts, seed=0, bad_files=False, **world)
        self.truth_uri = storage.join(corpus, "ground_truth.jsonl")
        self.truth = {(r := json.loads(line))["file"]: r
                      for line in storage.read_bytes(self.truth_uri).decode().splitlines()}
        ingest = run_ingest(storage.join(corpus, "media"), storage.join(self.w, "examples"))
        self.log(f"ingest {ingest['counts']}")
        self.pairs = run_synth(ingest["uri"], storage.join(self.w, "pairs"),
                               heldout_fraction=a.heldout)
        self.log(f"synth {self.pairs['counts']}")
        if a.world == "multimodal":  # natural pairs (captions, a clip's own audio) + synth's
            self.pairs = run_pairs(ingest["uri"], storage.join(self.w, "natural"),
                                   heldout_fraction=a.heldout, mix=(self.pairs["uri"],))
            self.log(f"pairs {self.pairs['counts']}")
        self.pft_shards = run_shard(self.pairs["uri"], storage.join(self.w, "shards"),
                                    a.rows_per_shard, 0)
        self.out["data"] = {"ingest": ingest["counts"], "pairs": self.pairs["counts"],
                            "pft_rows": self.pft_shards["counts"]}
        ex_dir, ex_manifest = mf.resolve_input(ingest["uri"])
        ex = mf.read_table(ex_dir, ex_manifest, "examples", columns=["id", "source_uris"])
        self.scene_of = {}
        for i, uris in zip(ex.column("id").to_pylist(), ex.column("source_uris").to_pylist(),
                           strict=True):
            rel = "/".join(uris[0].replace("\\", "/").split("/")[-2:])
            rec = self.truth.get(rel, {})
            self.scene_of[i] = (rec.get("key"), rec.get("family"))

    def cfg(self, seed: int, epochs: int, **kw) -> TrainConfig:
        a = self.args
        return TrainConfig(epochs=epochs, batch_size=a.batch_size, seed=seed,
                           checkpoint_every=a.checkpoint_every, dim=a.dim, layers=a.layers,
                           **kw)

    def train(self, name: str, shards: dict, stage: TrainStage, cfg: TrainConfig,
              init: str | None = None) -> dict:
        t = time.perf_counter()
        run = run_train(shards["uri"], self.ckpts, stage, cfg, init=init)
        metrics = storage.read_parquet([run["datasets"]["metrics"]]).to_pylist()
        wall = sum(m["data_wait_s"] + m["compute_s"] for m in metrics)
        info = {"checkpoint": run["checkpoint"], "steps": run["counts"]["steps"],
                "loop_s": round(wall, 1), "call_s": round(time.perf_counter() - t, 1),
                "s_per_step": round(wall / max(1, len(metrics)), 4),
                "final_loss": round(metrics[-1]["loss"], 4) if metrics else None,
                "reused": run["reused"]}
        self.out["runs"][name] = info
        self.log(f"train {name}: {info}")
        return run

    def evaluate(self, name: str, ckpt: str, dims: tuple[int, ...] = ()) -> dict:
        ev = run_eval(self.pairs["uri"], ckpt, self.ckpts, storage.join(self.w, "eval"),
                      self.truth_uri, 0, max_queries=self.args.max_queries, dims=dims)
        table = {p: {"r@1": e["r@1"], "r@5": e["r@5"], "ndcg@10": e["ndcg@10"],
                     "queries": e["queries"], "gallery": e["gallery"],
                     "by_dim": {d: m["r@1"] for d, m in e["by_dim"].items()},
                     "untrained_r@1": e["untrained_r@1"], "random_r@1": e["random_r@1"],
                     **({"lexical_r@1": e["lexical_r@1"]} if "lexical_r@1" in e else {})}
                 for p, e in ev["eval"].items()}
        self.out["runs"].setdefault(name, {})["eval"] = table
        self.log(f"eval {name}: " + ", ".join(f"{p} R@1 {e['r@1']:.3f}"
                                              for p, e in table.items()))
        self.save()
        return table

    def mine(self, name: str, ckpt: str, config: MiningConfig) -> dict:
        m = run_mine(self.pairs["uri"], storage.join(self.w, "triples"), ckpt, self.ckpts,
                     config=config, cache_root=storage.join(self.w, "embed-cache"))
        hard = self.hardness(m["uri"])
        info = {"counts": {k: v for k, v in m["counts"].items()
                           if k.startswith(("filtered", "kept", "negatives", "triples",
                                            "considered", "unfilled"))},
                "hardness": hard}
        self.out["mining"][name] = info
        self.log(f"mine {name}: {hard}")
        return m

    def hardness(self, triples_uri: str) -> dict:
        """What the kept negatives are, by ground truth: the positive's scene (a false
        negative), its near-miss family (one attribute off / swapped), or neither."""
        d, manifest = mf.resolve_input(triples_uri)
        rows = mf.read_table(d, manifest, "triples",
                             columns=["positive_id", "positive_score", "negatives"]).to_pylist()
        same_scene = same_family = other = 0
        margins = []
        for r in rows:
            key, fam = self.scene_of.get(r["positive_id"], (None, None))
            for n in r["negatives"]:
                nkey, nfam = self.scene_of.get(n["id"], (None, None))
                if key is not None and nkey == key:
                    same_scene += 1
                elif fam is not None and nfam == fam:
                    same_family += 1
                else:
                    other += 1
                if r["positive_score"] is not None and n["score"] is not None:
                    margins.append(r["positive_score"] - n["score"])
        total = max(1, same_scene + same_family + other)
        return {"negatives": same_scene + same_family + other,
                "false_negative_rate": round(same_scene / total, 4),
                "near_miss_rate": round(same_family / total, 4),
                "mean_margin": round(statistics.fmean(margins), 4) if margins else None}

    def curve(self, name: str, run_id: str) -> None:
        """Held-out R@1 at every saved step of a run (is stage 1 at a plateau?)."""
        points = []
        steps = sorted(d.rsplit("/", 1)[-1] for d in storage.list_dirs(
            storage.join(self.ckpts, run_id)) if d.rsplit("/", 1)[-1].startswith("step-"))
        for step in steps:
            t = self.evaluate(f"{name}@{step}", f"{run_id}/{step}")
            points.append({"step": int(step.split("-")[1]), **{p: t[p]["r@1"] for p in t}})
        self.out["curves"][name] = points

    # -- the study ----------------------------------------------------------------------
    def core_arm(self, s: int) -> None:
        """pft, ft from it on mined negatives, and ctrl: pft continued for ft's step count
        (epochs scaled by the two datasets' rows), each evaluated on every modality pair."""
        a = self.args
        pft = self.train(f"pft.s{s}", self.pft_shards, TrainStage.PFT,
                         self.cfg(s, a.pft_epochs))
        self.evaluate(f"pft.s{s}", pft["checkpoint"])
        m = self.mine(f"pft.s{s}", pft["checkpoint"], MiningConfig(negatives=a.negatives))
        self.ft(f"ft.s{s}", m["uri"], s, init=pft["checkpoint"])
        ft_steps = self.out["runs"][f"ft.s{s}"]["steps"]
        pft_steps_per_epoch = self.out["runs"][f"pft.s{s}"]["steps"] / a.pft_epochs
        epochs = max(1, round(ft_steps / max(1e-9, pft_steps_per_epoch)))
        self.continue_pft(f"ctrl.s{s}", s, epochs, init=pft["checkpoint"])

    def seed_arm(self, s: int) -> None:
        a = self.args
        pft = self.train(f"pft.s{s}", self.pft_shards, TrainStage.PFT,
                         self.cfg(s, a.pft_epochs))
        self.curve(f"pft.s{s}", pft["version"])
        self.evaluate(f"pft.s{s}", pft["checkpoint"])
        nomrl = self.train(f"nomrl.s{s}", self.pft_shards, TrainStage.PFT,
                           self.cfg(s, a.pft_epochs, embed_dims=(a.dim,)))
        self.evaluate(f"nomrl.s{s}", nomrl["checkpoint"], dims=(a.dim // 4, a.dim // 2))

        raw = self.mine(f"raw.s{s}", pft["checkpoint"], MiningConfig(negatives=a.negatives,
                                                                      false_negative=()))
        m = self.mine(f"pft.s{s}", pft["checkpoint"], MiningConfig(negatives=a.negatives))
        ft = self.ft(f"ft.s{s}", m["uri"], s, init=pft["checkpoint"])
        ctrl = self.continue_pft(f"ctrl.s{s}", s, a.ft_epochs, init=pft["checkpoint"])
        ratio = self.out["runs"][f"ft.s{s}"]["loop_s"] / max(
            1e-9, self.out["runs"][f"ctrl.s{s}"]["loop_s"])
        wall_epochs = max(a.ft_epochs, round(a.ft_epochs * ratio))
        self.out["runs"][f"ctrl.s{s}"]["ft_time_ratio"] = round(ratio, 3)
        self.continue_pft(f"ctrl_wall.s{s}", s, wall_epochs, init=pft["checkpoint"])
        if a.unfiltered_arm and s == a.seeds[0]:  # the same ft on negatives no rule filtered
            self.ft(f"ft_unfiltered.s{s}", raw["uri"], s, init=pft["checkpoint"])
        if a.remine:
            m2 = self.mine(f"ft.s{s}", ft["checkpoint"], MiningConfig(negatives=a.negatives))
            self.ft(f"ft2.s{s}", m2["uri"], s, init=ft["checkpoint"])
            self.continue_pft(f"ctrl2.s{s}", s, a.ft_epochs, init=ctrl["checkpoint"])
        self.pft_ckpt = getattr(self, "pft_ckpt", None) or pft["checkpoint"]
        self.ft_shards0 = getattr(self, "ft_shards0", None) or m["uri"]

    def ft(self, name: str, triples_uri: str, seed: int, init: str) -> dict:
        """Stage 2 from `init` on triples shuffled by `seed`: shard, train, evaluate."""
        a = self.args
        shards = run_shard(triples_uri, storage.join(self.w, "shards"), a.rows_per_shard, seed)
        run = self.train(name, shards, TrainStage.FT,
                         self.cfg(seed, a.ft_epochs, max_negatives=a.negatives, **self.cont),
                         init=init)
        self.evaluate(name, run["checkpoint"])
        return run

    def continue_pft(self, name: str, seed: int, epochs: int, init: str) -> dict:
        """The control: stage 1 on the pairs again, from `init`, with ft's learning rate."""
        run = self.train(name, self.pft_shards, TrainStage.PFT,
                         self.cfg(seed, epochs, **self.cont), init=init)
        self.evaluate(name, run["checkpoint"])
        return run

    def soup(self) -> None:
        """ft ingredients from ONE pft checkpoint (the first seed's), differing in ft data
        order."""
        ingredients = [self.out["runs"][f"ft.s{self.args.seeds[0]}"]["checkpoint"]]
        for s in self.args.soup_seeds:
            name = f"ft.s{self.args.seeds[0]}.data{s}"
            ingredients.append(self.ft(name, self.ft_shards0, s, init=self.pft_ckpt)
                               ["checkpoint"])
        soup = run_soup(ingredients, self.ckpts)
        self.out["runs"]["soup"] = {"checkpoint": soup["checkpoint"], "of": ingredients}
        self.evaluate("soup", soup["checkpoint"])


def mean_sd(vals: list[float | None], spread: bool = False) -> str:
    """`mean ± sd` of the values present (with `[min, max]` when `spread`), or `-`."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out = f"{statistics.fmean(vals):.3f} ± {sd:.3f}"
    return out + (f" [{min(vals):.3f}, {max(vals):.3f}]" if spread else "")


def summarize(out: dict, seeds: list[int]) -> str:
    runs = out["runs"]

    def r1(name: str, pair: str, dim: str | None = None) -> float | None:
        e = runs.get(name, {}).get("eval", {}).get(pair)
        if e is None:
            return None
        return e["by_dim"].get(dim) if dim else e["r@1"]

    def stat(vals: list[float | None]) -> str:
        return mean_sd(vals, spread=True)

    lines = ["| arm | " + " | ".join(f"{p} R@1 (mean ± sd [min, max])" for p in PAIRS) + " |",
             "|---|" + "---|" * len(PAIRS)]
    for arm in ("pft", "ctrl", "ft", "ctrl_wall", "ctrl2", "ft2", "ft_unfiltered", "nomrl"):
        if any(f"{arm}.s{s}" in runs for s in seeds):
            lines.append(f"| {arm} | " + " | ".join(
                stat([r1(f"{arm}.s{s}", p) for s in seeds]) for p in PAIRS) + " |")
    lines += ["", "Paired differences (same pft init), R@1 points:", ""]
    for a, b in (("ft", "ctrl"), ("ft", "ctrl_wall"), ("ft2", "ctrl2"), ("ft2", "ft"),
                 ("ft_unfiltered", "ft")):
        for p in PAIRS:
            diffs = [(r1(f"{a}.s{s}", p) or 0) - (r1(f"{b}.s{s}", p) or 0) for s in seeds
                     if r1(f"{a}.s{s}", p) is not None and r1(f"{b}.s{s}", p) is not None]
            if diffs:
                lines.append(f"- {a} - {b}, {p}: " + ", ".join(f"{100 * d:+.1f}" for d in diffs)
                             + f" (mean {100 * statistics.fmean(diffs):+.1f})")
    lines += ["", "| Matryoshka | " + " | ".join(PAIRS) + " |", "|---|" + "---|" * len(PAIRS)]
    for label, arm, dim in (("pft 32 / pft 128", "pft", "32"),
                            ("ft 32 / ft 128", "ft", "32")):
        lines.append(f"| {label} | " + " | ".join(stat(
            [(r1(f"{arm}.s{s}", p, dim) or 0) / max(1e-9, r1(f"{arm}.s{s}", p) or 0)
             for s in seeds if r1(f"{arm}.s{s}", p) is not None]) for p in PAIRS) + " |")
    for label, arm in (("pft at 32", "pft"), ("nomrl truncated to 32", "nomrl")):
        lines.append(f"| {label} (R@1) | " + " | ".join(
            stat([r1(f"{arm}.s{s}", p, "32") for s in seeds]) for p in PAIRS) + " |")
    if "soup" in runs:
        lines += ["", "| soup | " + " | ".join(PAIRS) + " |", "|---|" + "---|" * len(PAIRS)]
        first = f"ft.s{seeds[0]}"
        names = [first] + [n for n in runs if n.startswith(f"{first}.data")]
        lines.append("| ingredients | " + " | ".join(
            ", ".join(f"{r1(n, p):.3f}" for n in names if r1(n, p) is not None)
            for p in PAIRS) + " |")
        lines.append("| soup | " + " | ".join(f"{r1('soup', p):.3f}" for p in PAIRS) + " |")
    lines += ["", "| mining | kept | false-negative rate | near-miss rate | mean margin |",
              "|---|---|---|---|---|"]
    for name, m in out["mining"].items():
        h = m["hardness"]
        lines.append(f"| {name} | {h['negatives']} | {h['false_negative_rate']:.3f} | "
                     f"{h['near_miss_rate']:.3f} | {h['mean_margin']} |")
    return "\n".join(lines)


def summarize_pairs(out: dict, seeds: list[int]) -> str:
    """Per modality pair (issue 14 item 8): the arms' R@1 over seeds, the margin test
    ft - max(random, untrained) >= 3 x random on every seed, and ft - ctrl per seed."""
    runs = out["runs"]
    pairs = sorted({p for n, r in runs.items() if n.startswith("ft.s") for p in r.get("eval", {})})

    def get(name: str, pair: str, key: str = "r@1") -> float | None:
        return runs.get(name, {}).get("eval", {}).get(pair, {}).get(key)

    ms = mean_sd

    done = [s for s in seeds if f"ft.s{s}" in runs and f"ctrl.s{s}" in runs]
    lines = [f"Seeds finished: {done} (of {seeds}); R@1 mean ± sd over them.", "",
             "| pair | queries (min) | gallery | random | untrained | pft | ctrl | ft | "
             "ft - max(rand, untr) >= 3 x rand | ft - ctrl per seed (points) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        ft = [f"ft.s{s}" for s in done]
        queries = [get(n, p, "queries") for n in ft if get(n, p, "queries") is not None]
        margin = []
        for n in ft:
            r, rand, untr = get(n, p), get(n, p, "random_r@1"), get(n, p, "untrained_r@1")
            if None not in (r, rand, untr):
                margin.append(r - max(rand, untr) >= 3 * rand)
        diffs = [100 * (get(f"ft.s{s}", p) - get(f"ctrl.s{s}", p)) for s in done
                 if get(f"ft.s{s}", p) is not None and get(f"ctrl.s{s}", p) is not None]
        verdict = (f"{sum(margin)}/{len(margin)} seeds" if margin else "-")
        lines.append(
            f"| {p} | {min(queries) if queries else '-'} | {get(ft[0], p, 'gallery') if ft else '-'} | "
            f"{ms([get(n, p, 'random_r@1') for n in ft])} | "
            f"{ms([get(n, p, 'untrained_r@1') for n in ft])} | "
            f"{ms([get(f'pft.s{s}', p) for s in done])} | "
            f"{ms([get(f'ctrl.s{s}', p) for s in done])} | {ms([get(n, p) for n in ft])} | "
            f"{verdict} | {', '.join(f'{d:+.1f}' for d in diffs) or '-'} |")
    steps = [(runs[f"ft.s{s}"]["steps"], runs[f"ctrl.s{s}"]["steps"]) for s in done]
    lines += ["", "Steps (ft, ctrl) per seed: " + ", ".join(f"{a}/{b}" for a, b in steps)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--world", default="rich")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--heldout", type=float, default=0.5)
    ap.add_argument("--media", type=int, default=None,
                    help="multimodal: videos, audio clips, PDF pages and records, each "
                         "(default images // 2)")
    ap.add_argument("--video-audio", type=float, default=0.5,
                    help="multimodal: the share of videos with an audio track")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--soup-seeds", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--pft-epochs", type=int, default=12)
    ap.add_argument("--ft-epochs", type=int, default=4)
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rows-per-shard", type=int, default=1024)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-queries", type=int, default=2000)
    ap.add_argument("--remine", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--arms", choices=("full", "core"), default=None,
                    help="core: pft, ft and ctrl at equal steps (the multimodal default)")
    ap.add_argument("--unfiltered-arm", action=argparse.BooleanOptionalAction, default=True,
                    help="first seed: ft on negatives mined with no false-negative rule")
    args = ap.parse_args()
    args.arms = args.arms or ("core" if args.world == "multimodal" else "full")
    study = Study(args)
    study.data()
    if args.arms == "core":
        for s in args.seeds:
            study.core_arm(s)
            study.out["summary"] = summarize_pairs(study.out, args.seeds)
            study.save()
        study.out["wall_s"] = round(time.perf_counter() - study.t0)
        study.save()
        storage.write_atomic(storage.join(study.w, "study.md"), study.out["summary"].encode())
        print(study.out["summary"])
        return
    for s in args.seeds:  # seed 0's arm, then the soup (it needs only seed 0), then the rest
        study.seed_arm(s)
        if s == args.seeds[0] and args.soup_seeds:
            study.soup()
        study.out["summary"] = summarize(study.out, args.seeds)
        study.save()
    study.out["summary"] = summarize(study.out, args.seeds)
    study.out["wall_s"] = round(time.perf_counter() - study.t0)
    study.save()
    storage.write_atomic(storage.join(study.w, "study.md"), study.out["summary"].encode())
    print(study.out["summary"])


if __name__ == "__main__":
    main()
