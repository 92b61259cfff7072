"""The evaluation report: one self-contained HTML file (inline CSS, images as data URIs, no script, no
external URL) with the metric tables and the sample grids a reader checks the numbers against.

    html = render_report({"test": (estimates, samples)}, title="arm evaluation", meta={"model": "..."})
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from arm.evaluate import summary
from arm.evaluate.stats import Estimate

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.ci { color: #666; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 0.75em; }
.card { border: 1px solid #ddd; padding: 0.4em; width: 150px; font-size: 0.8em; }
.card.wide { width: 300px; }
.card img { image-rendering: pixelated; width: 128px; height: 128px; }
.pass { color: #186a3b; font-weight: bold; } .fail { color: #a93226; font-weight: bold; }
.meta { color: #555; font-size: 0.9em; }
"""


def png_data_uri(image: np.ndarray, scale: int = 1) -> str:
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image: np.ndarray, alt: str) -> str:
    return f'<img src="{png_data_uri(image)}" alt="{html.escape(alt)}">'


def metrics_table(estimates: dict[str, Estimate], keys: list[str] | None = None) -> str:
    rows = []
    for key in keys or sorted(estimates):
        e = estimates.get(key)
        if e is None:
            continue
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{e.value:.3f}</td>"
                    f"<td class='ci'>[{e.low:.3f}, {e.high:.3f}]</td><td>{e.n}</td></tr>")
    return ("<table><tr><th>metric</th><th>value</th><th>95% CI</th><th>n</th></tr>" + "".join(rows) + "</table>"
            if rows else "")


def verdict(sample: dict) -> str:
    """The word under a generated image: the verifier's PASS/FAIL, an agreement judge's, or none."""
    if sample["passed"] is None:
        return ""
    if sample.get("verdict"):
        return sample["verdict"]
    return "PASS" if sample["passed"] else "FAIL"


def edit_scores(sample: dict) -> str:
    return sample.get("scores") or f"G_SC {sample['g_sc']:.1f} · G_PQ {sample['g_pq']:.1f}"


def generation_grid(samples: list[dict], limit: int = 24) -> str:
    cards = []
    for s in samples[:limit]:
        word = verdict(s)
        mark = f"<span class='{'pass' if s['passed'] else 'fail'}'>{html.escape(word)}</span> " if word else ""
        cards.append(f"<div class='card'>{_img(s['image'], s['prompt'])}<br>{mark}{html.escape(s['prompt'])}</div>")
    return "<div class='grid'>" + "".join(cards) + "</div>"


def editing_grid(samples: list[dict], limit: int = 16) -> str:
    cards = []
    for s in samples[:limit]:
        target = f" {_img(s['target'], 'target')}" if s.get("target") is not None else ""
        cards.append(f"<div class='card wide'>{_img(s['source'], 'source')} {_img(s['image'], 'edited')}{target}<br>"
                     f"{html.escape(s['instruction'])}<br>{html.escape(edit_scores(s))}</div>")
    return "<div class='grid'>" + "".join(cards) + "</div>"


def understanding_grid(samples: list[dict], limit: int = 24) -> str:
    cards = []
    for s in samples[:limit]:
        mark = "<span class='pass'>right</span>" if s["correct"] else "<span class='fail'>wrong</span>"
        # A describe-first model's own description, which its answer was read from.
        said = (f"<br><small>described: {html.escape(s['description'])}</small>"
                if s.get("description") and s["description"] != s["prediction"] else "")
        cards.append(f"<div class='card'>{_img(s['image'], s['question'])}<br>Q: {html.escape(s['question'])}<br>"
                     f"model: {html.escape(s['prediction'])} {mark}<br>truth: {html.escape(s['answer'])}{said}</div>")
    return "<div class='grid'>" + "".join(cards) + "</div>"


HEADLINE = list(summary.HEADLINE)


def render_report(splits: dict, title: str = "arm evaluation", meta: dict | None = None) -> str:
    """splits: {split name: (estimates {key: Estimate}, Samples)} -> the HTML document."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append("<p class='meta'>" + " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}"
                                                     for k, v in meta.items()) + "</p>")
    for split, (estimates, samples) in splits.items():
        parts.append(f"<h2>Split: {html.escape(split)}</h2><h3>Headline</h3>")
        parts.append(metrics_table(estimates, HEADLINE))
        for task, name in (("gen", "Generation by category"), ("edit", "Editing by type"),
                           ("und", "Understanding by question type")):
            keys = [k for k in sorted(estimates) if k.startswith(task + "/") and k not in HEADLINE]
            if keys:
                parts.append(f"<h3>{name}</h3>" + metrics_table(estimates, keys))
        if samples.generation:
            parts.append("<h3>Generated images (prompt, verdict)</h3>" + generation_grid(samples.generation))
        if samples.editing:
            parts.append("<h3>Edits (source, edited, target where the data has one; instruction, scores)</h3>"
                         + editing_grid(samples.editing))
        if samples.understanding:
            parts.append("<h3>Understanding (image, question, answer)</h3>" + understanding_grid(samples.understanding))
    parts.append("</body></html>")
    return "\n".join(parts)


def comparison_table(rows: dict[str, dict[str, dict]], keys) -> str:
    """rows: {model label: {metric: a row of `compare` (a, b, delta, low, high, significant)}}, the first
    label the baseline: its values; every other: its value, the change and the change's 95% interval."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    lines = [f"<table><tr><th>model</th>{head}</tr>"]
    for i, (label, metrics) in enumerate(rows.items()):
        cells = []
        for key in keys:
            r = metrics.get(key)
            if r is None:
                cells.append("<td>-</td>")
            elif i == 0:
                cells.append(f"<td>{r['a']:.3f}</td>")
            else:
                mark = " <span class='pass'>*</span>" if r["significant"] else ""
                cells.append(f"<td>{r['b']:.3f} ({r['delta']:+.3f}){mark}<br><span class='meta'>"
                             f"[{r['low']:+.3f}, {r['high']:+.3f}]</span></td>")
        lines.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    return "".join(lines) + "</table>"


def render_comparison(sections: dict[str, dict[str, dict[str, dict]]], keys, title: str = "arm comparison",
                      note: str = "") -> str:
    """sections: {heading: rows for `comparison_table`} -> a self-contained HTML document."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if note:
        parts.append(f"<p class='meta'>{html.escape(note)}</p>")
    for heading, rows in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>" + comparison_table(rows, keys))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_tensorboard(writer, samples, step: int, prefix: str = "samples", columns: int = 8) -> None:
    """The same samples as TensorBoard images and text: generated images, sources above their edits, and a
    question / answer / model table."""
    from arm.images import grid_to_tensorboard, make_grid

    if samples.generation:
        grid = make_grid([s["image"] for s in samples.generation[:4 * columns]], columns=columns, scale=2)
        writer.add_image(f"{prefix}/generation", grid_to_tensorboard(grid), step)
        writer.add_text(f"{prefix}/generation_prompts", "\n\n".join(
            f"{i}. {verdict(s) or '-'}: {s['prompt']}"
            for i, s in enumerate(samples.generation[:4 * columns])), step)
    if samples.editing:
        edits = samples.editing[:columns]
        grid = make_grid([s["source"] for s in edits] + [s["image"] for s in edits], columns=len(edits), scale=2)
        writer.add_image(f"{prefix}/editing (sources above edits)", grid_to_tensorboard(grid), step)
        writer.add_text(f"{prefix}/edit_instructions", "\n\n".join(
            f"{i}. {s['instruction']} ({edit_scores(s)})" for i, s in enumerate(edits)), step)
    if samples.understanding:
        rows = ["| question | answer | model | model's description |", "| --- | --- | --- | --- |"] + [
            f"| {s['question']} | {s['answer']} | {s['prediction']} | {s.get('description') or ''} |"
            for s in samples.understanding[:2 * columns]]
        writer.add_text(f"{prefix}/understanding", "\n".join(rows), step)
