"""The search's pages: the stand-alone report written beside the results, and the HTML
both it and the live dashboard are made of.

One stylesheet and one script (``assets/``) draw both, inlined into the page so the report
opens from a file, an S3 download or an e-mail attachment with no network and no Airflow.
The PNG images are drawn from the same curves with matplotlib, for where HTML is not
shown (a pull request, a slide, a chat message).
"""

from __future__ import annotations

import html
import io
import json
import logging
from pathlib import Path

from cirrus_airflow.storage import Storage, join

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
REPORT = "report.html"
PLOTS = {"t": "loss_vs_time.png", "cost_usd": "loss_vs_cost.png"}
_X_LABELS = {"t": "training seconds", "cost_usd": "estimated dollars"}
_CUT_SHORT = ("stopped_early", "killed", "failed", "over_budget")
# One colour per configuration, in the same order on the pages and in the PNG plots.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39", "#7b4173", "#3182bd")


def page(title: str, script: str, *, subtitle: str = "", links: list[tuple[str, str]] = (),
         attributes: dict[str, str] | None = None) -> str:
    """A whole HTML page: the shared stylesheet and drawing script inlined, then ``script``.
    ``links`` (text, URL) open in the whole window, not in the Airflow UI's frame;
    ``attributes`` go on <body>, where the page's script reads them."""
    css = asset("page.css")
    drawing = asset("page.js")
    anchors = "".join(f' · <a href="{html.escape(url)}" target="_top">{html.escape(text)}</a>' for text, url in links)
    body = "".join(f' {html.escape(k)}="{html.escape(v)}"' for k, v in (attributes or {}).items())
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body{body}>"
        f"<h1>{html.escape(title)}</h1><div class=\"muted\">{html.escape(subtitle)}{anchors}</div>"
        "<div id=\"message\" role=\"status\"></div><div id=\"root\"></div>"
        f"<script>window.CIRRUS_PALETTE = {json.dumps(PALETTE)};\n{drawing}</script>"
        f"<script>{script}</script></body></html>\n"
    )


def asset(name: str) -> str:
    return (ASSETS / name).read_text()


def embed_json(value: object) -> str:
    """JSON that is safe inside a <script> element (no '</script>' can end it early)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def report_html(results: dict, *, title: str | None = None) -> str:
    """The stand-alone report of a search: the dashboard's page, drawn once from ``results``."""
    title = title or f"Search under {results.get('output', '')}"
    script = f"CirrusPage.render(document.getElementById('root'), {embed_json(results)}, {{}});"
    return page(title, script, subtitle=f"{len(results['configs'])} configurations, model {results['model']}")


def plot_png(results: dict, x: str) -> bytes:
    """One plot of held-out loss against ``x`` (``t`` or ``cost_usd``) for every configuration."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot()
    best = (results.get("best") or {}).get("id")
    drawn = 0
    for i, config in enumerate(results["configs"]):
        points = [(p[x], p["test_loss"]) for p in config.get("curve", [])
                  if p.get(x) is not None and p.get("test_loss") is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        drawn += 1
        axes.plot(xs, ys, color=PALETTE[i % len(PALETTE)], marker="." if len(xs) == 1 else None,
                  linewidth=2.6 if config["id"] == best else 1.3,
                  linestyle="--" if config["status"] in _CUT_SHORT else "-",
                  label=config["id"] + (" (best)" if config["id"] == best else ""))
    axes.set_xlabel(_X_LABELS[x])
    axes.set_ylabel(f"held-out {results['metric']}")
    axes.grid(True, color="#eeeeee")
    if not drawn:
        axes.text(0.5, 0.5, "no held-out evaluation", transform=axes.transAxes, ha="center", color="#6b7785")
    elif len(results["configs"]) <= 16:
        axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def write_report(storage: Storage, output: str, results: dict) -> dict[str, str]:
    """``report.html`` and the PNG plots beside ``results.json``; returns their URIs. A report
    that cannot be drawn is logged, not raised: the results it shows are already saved."""
    written = {}
    try:
        uri = join(output, REPORT)
        storage.write_text(uri, report_html(results), content_type="text/html; charset=utf-8")
        written["html"] = uri
        for x, name in PLOTS.items():
            uri = join(output, name)
            storage.write_bytes(uri, plot_png(results, x), content_type="image/png")
            written[x] = uri
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("could not write the search's report under %s; results.json has everything", output)
    return written
