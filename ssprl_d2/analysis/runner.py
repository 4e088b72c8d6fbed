"""The analysis report of a pre-training checkpoint: load, extract, draw, assemble.

Sections that do not apply to a model (no prototypes, no cross-scale learners, no labels in the
dataset, no ``metrics.json``) are replaced by a note; what applies is found by asking the model
what it has, not by comparing architecture names.
"""
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..atomic import atomic_write_bytes
from ..data.dataset_mapper import multilabel_targets
from ..engine.checkpoint import AtomicDetectionCheckpointer, verify_loaded_weights
from ..modeling.task import get_task
from . import figures as F
from .curves import (
    COLLAPSE_EFFECTIVE,
    COLLAPSE_ENTROPY,
    collapse_spans,
    curve_groups,
    load_metrics,
    scale_collapse,
    series,
)
from .features import ImageFeatures, extract_features, has_prototypes
from .prototypes import (
    cooccurrence,
    effective_prototype_share,
    most_used_prototypes,
    prototype_usage,
    top_members,
    top_pairs,
    tsne_layout,
)
from .report import Section, write_html
from .retrieval import cosine_neighbors, knn_multilabel_map

__all__ = ["AnalysisOptions", "load_pretrained", "write_report"]

logger = logging.getLogger(__name__)


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class AnalysisOptions:
    """What the report shows and how much of the data it reads (each field's ``help``)."""

    num_images: int = _opt(500, "analysed images (the first ones of the dataset)")
    bank_images: int = _opt(2000, "labelled DATASETS.TRAIN images used as the kNN bank")
    prototypes_per_scale: int = _opt(6, "prototypes shown per scale (the most used)")
    patches_per_prototype: int = _opt(8, "top-probability patches shown per prototype")
    pairs: int = _opt(4, "top g_phi (image, patch) prototype pairs shown per patch scale")
    queries: int = _opt(6, "retrieval queries (spread evenly over the analysed images)")
    neighbors: int = _opt(6, "retrieved images per query")
    knn_k: int = _opt(20, "neighbours of the kNN multi-label probe")
    tsne_points: int = _opt(400, "embeddings per scale in the t-SNE")
    batch_size: int = _opt(32, "images per forward pass")
    metrics: Optional[str] = _opt(None, "metrics.json of the run (default: beside MODEL.WEIGHTS)")
    seed: int = _opt(0, "seed of the samples and the t-SNE")
    progress: bool = _opt(True, "show progress bars")


def load_pretrained(cfg) -> Tuple[torch.nn.Module, Optional[int]]:
    """Build the pre-training model of ``cfg`` and load ``MODEL.WEIGHTS`` into all of it.

    Returns:
        (model in eval mode, the checkpoint's iteration or None).

    Raises:
        ValueError: the config is not a pre-training config, or no weights are given.
        FileNotFoundError: the weights file does not exist.
        WeightsMismatchError: the file leaves part of the model at its random initialisation.
    """
    task = get_task(cfg)
    if task != "pretrain":
        raise ValueError(
            f"{cfg.MODEL.META_ARCHITECTURE} is a {task!r} model; the report reads pre-training "
            "checkpoints (configs/Pretrain/, configs/quick_schedules/ssprl_*)"
        )
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("the report needs MODEL.WEIGHTS <pre-training checkpoint .pth>")
    if not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} does not exist")
    model = build_model(cfg)
    checkpointer = AtomicDetectionCheckpointer(model)
    extra = checkpointer.load(cfg.MODEL.WEIGHTS)
    # queues are per-process training state whose length depends on the world size of the run;
    # the report does not use them, every other tensor must come from the file
    inc = checkpointer.incompatible
    inc = SimpleNamespace(
        missing_keys=[k for k in inc.missing_keys if not k.startswith("queues.")],
        incorrect_shapes=[s for s in inc.incorrect_shapes if not s[0].startswith("queues.")],
    )
    verify_loaded_weights(inc, model.state_dict().keys(), cfg.MODEL.WEIGHTS, "",
                          cfg.MODEL.RESNETS.DEPTH)
    model.eval()
    it = extra.get("iteration") if isinstance(extra, dict) else None
    return model, (int(it) if it is not None else None)


def _labels(name: str, dicts: Sequence[dict]) -> Tuple[Optional[np.ndarray], List[str]]:
    classes = list(getattr(MetadataCatalog.get(name), "thing_classes", []) or [])
    if not classes or not any(d.get("annotations") for d in dicts):
        return None, classes
    return np.stack([multilabel_targets(d, len(classes)) for d in dicts]), classes


def _fig(out: str, name: str, fig) -> str:
    F.save_figure(fig, os.path.join(out, name))
    return name


class _Report:
    """Holds what one run extracted; each method draws one section."""

    def __init__(self, cfg, model, out: str, opts: AnalysisOptions):
        self.cfg, self.model, self.out, self.opts = cfg, model, out, opts
        self.summary: Dict[str, object] = {}
        self.timings: Dict[str, float] = {}

    # ------------------------------------------------------------ data
    def extract(self, name: str) -> None:
        t = time.perf_counter()
        dicts = DatasetCatalog.get(name)[: self.opts.num_images]
        if not dicts:
            raise ValueError(f"dataset {name!r} has no images")
        ci = self.cfg.INPUT.PRETRAIN
        num_patch_scales = self.model.num_scales - 1 if has_prototypes(self.model) else 0
        self.feats: ImageFeatures = extract_features(
            self.model, dicts, ci.SIZE_CROPS[0], list(ci.GRIDS)[:num_patch_scales],
            list(ci.PATCH_CROP_SIZES)[:num_patch_scales], self.opts.batch_size,
            desc=f"{name}" if self.opts.progress else None,
        )
        self.dicts = [dicts[i] for i in self.feats.dataset_index]
        self.labels, self.classes = _labels(name, self.dicts)
        self.scale_names = [
            "s0 (image)" if e.scale == 0 else f"s{e.scale} ({e.grid}x{e.grid})"
            for e in self.feats.scales
        ]
        self.timings["extract_s"] = time.perf_counter() - t

    # ------------------------------------------------------------ sections
    def curves(self) -> Section:
        sec = Section("Training curves")
        path = self.opts.metrics or os.path.join(
            os.path.dirname(os.path.abspath(self.cfg.MODEL.WEIGHTS)), "metrics.json")
        records = load_metrics(path)
        fig = F.curves_figure(records, COLLAPSE_ENTROPY) if records else None
        if fig is None:
            sec.note = f"no training metrics found at {path} (pass --metrics FILE)"
        else:
            sec.figures.append((_fig(self.out, "curves.png", fig), f"from {path}"))
            sec.text.append(
                "Every loss term, the mean prediction entropy divided by ln K_s, the fraction of "
                "prototypes that are some sample's code and the effective share of prototypes "
                "(exp of the entropy of the arg-max histogram / K_s, dotted), per scale (colour "
                f"= scale, dashed = L_cross). Shaded spans: entropy at or above {COLLAPSE_ENTROPY}"
                " of ln K, i.e. predictions close to uniform, the ln K plateau of a collapsed "
                f"run; effective share at or below {COLLAPSE_EFFECTIVE}, i.e. most rows on a "
                "few prototypes.")
        collapsed = {}
        for key in curve_groups(records)["entropy"]:
            its, vals = series(records, key)
            collapsed[key] = collapse_spans(its, vals)
        self.summary["collapse_spans"] = collapsed
        sec.text += self._collapse_summary(records)
        return sec

    def _collapse_summary(self, records: List[dict]) -> List[str]:
        # every collapse signal per scale: the logged curves' last values and the effective
        # share of this report's own assignments (what the usage panel draws)
        names = {e.scale: n for e, n in zip(self.feats.scales, self.scale_names)}
        assigned = {e.scale: effective_prototype_share(e.assignments, e.probs.shape[1])
                    for e in self.feats.scales}
        verdict = scale_collapse(records, assigned)
        self.summary["collapse"] = {names.get(s, f"s{s}"): v for s, v in verdict.items()}
        flagged = [names.get(s, f"s{s}") for s, v in verdict.items() if v["collapsed"]]
        self.summary["collapsed_scales"] = flagged
        if not verdict:
            return []
        lines = []
        for s, v in verdict.items():
            parts = []
            if v["entropy"] is not None:
                parts.append(f"prediction entropy {v['entropy']:.3f} of ln K (last logged), "
                             f"spans at or above {COLLAPSE_ENTROPY}: "
                             f"{v['entropy_spans'] or 'none'}")
            if v["effective_assigned"] is not None:
                parts.append(f"effective prototypes {v['effective_assigned']:.3f} of K in this "
                             "report's assignments")
            if v["effective_logged"] is not None:
                parts.append(f"{v['effective_logged']:.3f} of K logged last, spans at or below "
                             f"{COLLAPSE_EFFECTIVE}: {v['effective_spans'] or 'none'}")
            verdict_text = ("COLLAPSED (" + ", ".join(v["collapsed_by"]) + ")" if v["collapsed"]
                            else "not collapsed")
            lines.append(f"{names.get(s, f's{s}')}: " + "; ".join(parts) + f"; {verdict_text}.")
        lines.append(
            f"Collapsed scales: {', '.join(flagged) or 'none'} (a scale counts as collapsed when "
            f"its last logged entropy is at or above {COLLAPSE_ENTROPY} of ln K, or its effective "
            f"share of prototypes, logged or from this report's assignments, at or below "
            f"{COLLAPSE_EFFECTIVE}).")
        return lines

    def usage(self) -> Section:
        sec = Section("Prototype usage")
        scales = self.feats.scales
        usages = [prototype_usage(e.assignments, e.probs.shape[1]) for e in scales]
        sec.figures.append((_fig(self.out, "prototype_usage.png",
                                 F.usage_figure(usages, self.scale_names)),
                            "share of the analysed images / patches assigned to each prototype"))
        sec.text.append("Arg-max assignment of every image (scale 0) and every grid cell (patch "
                        "scales). A healthy run spreads over many prototypes (dashed: uniform); "
                        "one or two tall bars mean the scale collapsed onto few prototypes.")
        self.summary["prototypes_used"] = {n: int((u > 0).sum()) for n, u in
                                           zip(self.scale_names, usages)}
        effective = {n: effective_prototype_share(e.assignments, e.probs.shape[1])
                     for n, e in zip(self.scale_names, scales)}
        self.summary["effective_prototypes"] = effective
        sec.text.append("Effective share of prototypes (exp of the entropy of each panel's "
                        "histogram / K; 1 uniform, 1 / K all on one; collapse at or below "
                        f"{COLLAPSE_EFFECTIVE}): "
                        + ", ".join(f"{n} {v:.3f}" for n, v in effective.items()) + ".")
        return sec

    def _top_thumbs(self, s: int) -> List[Optional[np.ndarray]]:
        e = self.feats.scales[s]
        out = []
        for k in range(e.probs.shape[1]):
            rows = top_members(e.probs, k, 1)
            out.append(e.thumbs[rows[0]] if len(rows) else None)
        return out

    def tsne(self) -> Section:
        t = time.perf_counter()
        sec = Section("Prototypes in t-SNE (paper Figure 2)")
        scales = self.feats.scales
        protos = [self.model.prototypes[e.scale].weight.detach().cpu().numpy() for e in scales]
        pxy, exy, _ = tsne_layout(protos, [e.z for e in scales], self.opts.tsne_points,
                                  self.opts.seed)
        fig = F.tsne_figure(pxy, exy, [self._top_thumbs(e.scale) for e in scales],
                            self.scale_names)
        sec.figures.append((_fig(self.out, "tsne_prototypes.png", fig),
                            "one joint t-SNE (cosine) of all prototypes and sampled embeddings"))
        sec.text.append(
            "Left: every scale's prototypes (stars) and embeddings (dots) in one layout, coloured "
            "by scale. Other panels: one scale each, every prototype drawn as the patch with the "
            "highest probability for it (hollow circle: nothing assigned). As in the paper, "
            "nearby prototypes should hold similar content (same shape, colour or background) "
            "and distant ones different content.")
        self.timings["tsne_s"] = time.perf_counter() - t
        return sec

    def members(self) -> Section:
        sec = Section("Top patches per prototype")
        n, m = self.opts.prototypes_per_scale, self.opts.patches_per_prototype
        for e, name in zip(self.feats.scales, self.scale_names):
            K = e.probs.shape[1]
            chosen = most_used_prototypes(e.assignments, K, n)
            rows, labels, caps = [], [], []
            for k in chosen:
                idx = top_members(e.probs, k, m)
                rows.append([e.thumbs[i] for i in idx])
                caps.append([f"{e.probs[i, k]:.2f}" for i in idx])
                labels.append(f"C{e.scale}[{k}] n={int((e.assignments == k).sum())}")
            fig = F.image_grid_figure(rows, labels, f"{name}: the {len(chosen)} most used "
                                      f"prototypes, top-{m} patches by probability", caps)
            sec.figures.append((_fig(self.out, f"prototype_patches_s{e.scale}.png", fig),
                                f"{name}: row = prototype (n = assigned), cell = probability"))
        sec.text.append("Each row: the images (scale 0) or grid cells (patch scales) assigned to "
                        "one prototype, highest probability first. A semantic prototype shows "
                        "one kind of content across different images.")
        return sec

    def cross_scale(self) -> Section:
        sec = Section("Cross-scale correlation g_phi (paper Figure 3)")
        scales = self.feats.scales
        if "cross_scale" not in self.model.analysis_sections or len(scales) < 2:
            sec.note = "this model has no cross-scale learners g_phi"
            return sec
        learners = self.model.cross_learners
        g0 = scales[0]
        panels, marks, pair_rows, pair_labels = [], [], [], []
        m = max(2, self.opts.patches_per_prototype // 2)
        for e, name in zip(scales[1:], self.scale_names[1:]):
            w = learners[e.scale - 1].weight.detach().cpu().numpy()  # (K_0, K_s)
            co = cooccurrence(g0.assignments, e.assignments, e.image_index, w.shape[0],
                              w.shape[1]).astype(np.float64)
            co = co / np.maximum(co.sum(axis=1, keepdims=True), 1)
            pairs = top_pairs(w, self.opts.pairs,
                              rows=prototype_usage(g0.assignments, w.shape[0]) > 0,
                              cols=prototype_usage(e.assignments, w.shape[1]) > 0)
            panels += [(f"g_phi weights, {name}", w),
                       (f"observed: patches of {name} per image prototype", co)]
            marks += [[(a, b) for a, b, _ in pairs], [(a, b) for a, b, _ in pairs]]
            for a, b, v in pairs:
                imgs = [g0.thumbs[i] for i in top_members(g0.probs, a, m)]
                pats = [e.thumbs[i] for i in top_members(e.probs, b, m)]
                pair_rows.append(imgs + [None] * (m - len(imgs)) + [None] + pats)
                pair_labels.append(f"C0[{a}] | C{e.scale}[{b}] w={v:.2f}")
        fig = F.heatmaps_figure(panels, "patch-scale prototype k_s", "image prototype k_0", marks)
        sec.figures.append((_fig(self.out, "cross_scale_heatmaps.png", fig),
                            "rows: scale-0 prototypes; columns: patch-scale prototypes; "
                            "red: the top pairs of g_phi among the prototypes in use"))
        fig = F.image_grid_figure(pair_rows, pair_labels,
                                  f"top g_phi pairs: {m} images of C0[k_0] | {m} patches of "
                                  "C_s[k_s]")
        sec.figures.append((_fig(self.out, "cross_scale_pairs.png", fig),
                            "left: images of the global prototype; right: patches of the patch "
                            "prototype g_phi links to it most strongly"))
        sec.text.append(
            "g_phi,s maps the pooled scale-s prediction onto the K_0 image prototypes; its weight "
            "(row k_0, column k_s) says how much patch prototype k_s votes for image prototype "
            "k_0. The second heatmap of each scale is what the paper's Figure 3 counts: for the "
            "images assigned to k_0, how their patches are assigned (rows sum to 1). Where the "
            "learner works, the two agree and the patch rows show parts of the image rows.")
        return sec

    def retrieval(self, bank_name: Optional[str], name: str) -> Section:
        sec = Section("Nearest-neighbour retrieval (pooled trunk feature, cosine)")
        f, thumbs = self.feats.features, self.feats.thumbs
        nq = min(self.opts.queries, len(f))
        queries = np.unique(np.linspace(0, len(f) - 1, nq).round().astype(int))
        idx, sims = cosine_neighbors(f[queries], f, self.opts.neighbors + 1)
        rows, caps, frames, labels = [], [], [], []
        for q, (ids, ss) in zip(queries, zip(idx, sims)):
            ids_, ss_ = [i for i in ids if i != q][: self.opts.neighbors], \
                [s for i, s in zip(ids, ss) if i != q][: self.opts.neighbors]
            rows.append([thumbs[q], None] + [thumbs[i] for i in ids_])
            if self.labels is not None:
                caps.append([F.label_text(self.labels[q], self.classes), ""]
                            + [F.label_text(self.labels[i], self.classes) for i in ids_])
                frames.append([None, None] + [F.color_for_match(
                    F.shares_label(self.labels[q], self.labels[i])) for i in ids_])
            else:
                caps.append(["query", ""] + [f"{s:.2f}" for s in ss_])
            labels.append(f"image {int(self.feats.dataset_index[q])}")
        fig = F.image_grid_figure(rows, labels, f"query | its {self.opts.neighbors} nearest "
                                  f"images in {name}", caps, frames or None, cell_inches=0.95)
        sec.figures.append((_fig(self.out, "retrieval.png", fig),
                            "first column: query; then its nearest images, most similar first"
                            + (" (green frame: shares a label with the query, red: none)"
                               if self.labels is not None else "")))
        sec.text.append("Global average pooled trunk features (what fine-tuning starts from), "
                        "cosine similarity, the query itself left out.")
        sec.table = self._knn(bank_name, name)
        return sec

    def _knn(self, bank_name: Optional[str], name: str) -> List[Sequence[str]]:
        if self.labels is None:
            self.summary["knn"] = None
            return [["kNN multi-label mAP"], [f"not computed: {name} has no labels"]]
        f, y = self.feats.features, self.labels
        bank = None
        if bank_name and bank_name != name:
            dicts = DatasetCatalog.get(bank_name)[: self.opts.bank_images]
            bank_labels, bank_classes = _labels(bank_name, dicts)
            if bank_labels is not None and bank_classes == self.classes:
                t = time.perf_counter()
                bf = extract_features(self.model, dicts, self.cfg.INPUT.PRETRAIN.SIZE_CROPS[0],
                                      batch_size=self.opts.batch_size, with_embeddings=False,
                                      desc=f"{bank_name} (kNN bank)" if self.opts.progress
                                      else None)
                bank = (bf.features, bank_labels[bf.dataset_index], bank_name)
                self.timings["bank_extract_s"] = time.perf_counter() - t
        if bank is None:  # no separate labelled bank: even images vote for odd ones
            bank = (f[0::2], y[0::2], f"{name} (even images)")
            f, y = f[1::2], y[1::2]
        res = knn_multilabel_map(bank[0], bank[1], f, y, self.classes, self.opts.knn_k)
        res.update(bank=bank[2], evaluated=name, bank_size=len(bank[0]), test_size=len(f))
        self.summary["knn"] = res
        return [["kNN multi-label mAP", "chance (class frequency)", "k", "bank", "evaluated"],
                [f"{res['mAP']:.1f}", f"{res['chance_mAP']:.1f}", str(res["k"]),
                 f"{bank[2]} ({len(bank[0])})", f"{name} ({len(f)})"]]

    def other_methods(self) -> Section:
        if "pseudo_positives" in self.model.analysis_sections:
            return self.pseudo_positives()
        sec = Section("Method-specific views")
        sec.note = (f"{type(self.model).__name__} has neither MLS pseudo-positive pairs nor "
                    "ViT matched patch pairs; those views appear for the methods that have them.")
        return sec

    def pseudo_positives(self) -> Section:
        """MLS: each query's top-k pseudo-positives, g1 . g_key over the analysed images."""
        sec = Section("MLS pseudo-positive pairs (top-k of g1 . Q_g)")
        t = time.perf_counter()
        with _key_trunk(self.model):
            keys = extract_features(self.model, self.dicts, self.cfg.INPUT.PRETRAIN.SIZE_CROPS[0],
                                    batch_size=self.opts.batch_size, with_embeddings=False,
                                    desc="key encoder" if self.opts.progress else None)
        self.timings["key_extract_s"] = time.perf_counter() - t
        f, g, thumbs = self.feats.features, keys.features, self.feats.thumbs
        k = min(int(self.model.top_k), len(g) - 1, self.opts.neighbors)
        nq = min(self.opts.queries, len(f))
        queries = np.unique(np.linspace(0, len(f) - 1, nq).round().astype(int))
        idx, _ = cosine_neighbors(f[queries], g, k + 1)
        rows, caps, frames, shared = [], [], [], []
        for q, ids in zip(queries, idx):
            ids = [i for i in ids if i != q][:k]
            rows.append([thumbs[q], None] + [thumbs[i] for i in ids])
            if self.labels is not None:
                hits = [F.shares_label(self.labels[q], self.labels[i]) for i in ids]
                shared += hits
                caps.append([F.label_text(self.labels[q], self.classes), ""]
                            + [F.label_text(self.labels[i], self.classes) for i in ids])
                frames.append([None, None] + [F.color_for_match(h) for h in hits])
        fig = F.image_grid_figure(rows, [f"image {int(self.feats.dataset_index[q])}"
                                         for q in queries],
                                  f"query | its {k} pseudo-positives (key-encoder features)",
                                  caps or None, frames or None, cell_inches=0.95)
        sec.figures.append((_fig(self.out, "pseudo_positives.png", fig),
                            "first column: query (query trunk); then the images whose key-encoder "
                            "features are most similar, i.e. the entries its pseudo-label marks 1"
                            + (" (green: shares a label, red: none)" if shared else "")))
        sec.text.append("MLS's pseudo-labels mark the top-k dictionary entries by g1 . Q_g; here "
                        "the dictionary is replaced by the analysed images' key-encoder features, "
                        "so each row shows which images the query would be pulled towards.")
        if shared:
            precision = 100.0 * float(np.mean(shared))
            self.summary["pseudo_positive_precision"] = precision
            sec.table = [["pseudo-positives sharing a label with the query (%)", "k", "queries"],
                         [f"{precision:.1f}", str(k), str(len(queries))]]
        return sec


@contextlib.contextmanager
def _key_trunk(model: torch.nn.Module) -> Iterator[None]:
    """Run the model's inference path through its momentum (key) trunk inside the block."""
    query = model.backbone
    model.backbone = model.momentum_trunk()
    try:
        yield
    finally:
        model.backbone = query


def write_report(cfg, output_dir: str, options: Optional[AnalysisOptions] = None,
                 model: Optional[torch.nn.Module] = None, iteration: Optional[int] = None) -> str:
    """Write ``report.html``, its PNG figures and ``summary.json`` into ``output_dir``.

    Args:
        cfg: a pre-training config with ``MODEL.WEIGHTS``; the analysed dataset is
            ``DATASETS.TEST[0]`` (``DATASETS.TRAIN[0]`` when TEST is empty) and the kNN bank
            ``DATASETS.TRAIN[0]`` when it has the same labels.
        output_dir: created if absent.
        options: what to show.
        model: an already loaded model (default: :func:`load_pretrained`).
        iteration: the checkpoint's iteration, for the page (with ``model``).

    Returns:
        the path of ``report.html``.
    """
    opts = options or AnalysisOptions()
    start = time.perf_counter()
    if model is None:
        model, iteration = load_pretrained(cfg)
    os.makedirs(output_dir, exist_ok=True)
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else cfg.DATASETS.TRAIN[0]
    bank_name = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None
    rep = _Report(cfg, model, output_dir, opts)
    rep.extract(name)
    t = time.perf_counter()
    sections = [rep.curves()]
    if rep.feats.scales:
        sections += [rep.usage(), rep.tsne(), rep.members(), rep.cross_scale()]
    else:
        sections.append(Section("Prototypes", note=f"{type(model).__name__} has no prototype "
                                "sets: t-SNE, top patches and g_phi are left out"))
    sections += [rep.retrieval(bank_name, name), rep.other_methods()]
    rep.timings["figures_s"] = time.perf_counter() - t - rep.timings.get("bank_extract_s", 0.0)
    rep.timings["total_s"] = time.perf_counter() - start
    k = [e.probs.shape[1] for e in rep.feats.scales]
    lines = [
        f"checkpoint: {cfg.MODEL.WEIGHTS}" + (f" (iteration {iteration})" if iteration is not None
                                              else ""),
        f"model: {cfg.MODEL.META_ARCHITECTURE}, {model.trunk_name}"
        + (f", K_s = {k}" if k else ""),
        f"dataset: {name}, {len(rep.feats.features)} images"
        + (f" ({len(rep.classes)} classes)" if rep.labels is not None else ", no labels"),
        "time (s): " + ", ".join(f"{key[:-2].replace('_', ' ')} {v:.1f}"
                                 for key, v in rep.timings.items()),
    ]
    summary = {"weights": cfg.MODEL.WEIGHTS, "iteration": iteration, "dataset": name,
               "images": len(rep.feats.features), "num_prototypes": k,
               "timings": rep.timings, "options": asdict(opts), **rep.summary}
    atomic_write_bytes(os.path.join(output_dir, "summary.json"),
                       json.dumps(summary, indent=1, default=float).encode())
    path = write_html(os.path.join(output_dir, "report.html"),
                      f"Pre-training report: {os.path.basename(cfg.MODEL.WEIGHTS)}", sections,
                      lines)
    logger.info(f"report written to {path} ({rep.timings['total_s']:.1f} s)")
    return path
