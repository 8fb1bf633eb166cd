// The search page: summary, two plots (held-out loss against time and against cost) and the
// configuration table. The live dashboard calls render() every second with the search's
// live.json; the stand-alone report calls it once with results.json. No libraries: the
// report must open from a file with no network.
"use strict";
var CirrusPage = (function () {
  var PALETTE = window.CIRRUS_PALETTE;  // the PNG plots' colours, from report.py
  var ENDED = {finished: 1, stopped_early: 1, killed: 1, failed: 1, over_budget: 1};
  var CUT_SHORT = {stopped_early: 1, killed: 1, failed: 1, over_budget: 1};
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    var node = tag.indexOf("svg:") === 0 ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    return Number(value).toFixed(digits);
  }

  function dollars(value) {
    if (value === null || value === undefined) return "–";
    return value < 0.01 ? "$" + Number(value).toPrecision(3) : "$" + Number(value).toFixed(2);
  }

  function colour(index) { return PALETTE[index % PALETTE.length]; }

  // Round tick values covering [lo, hi].
  function ticks(lo, hi, count) {
    var span = hi - lo || Math.abs(hi) || 1;
    var step = Math.pow(10, Math.floor(Math.log10(span / count)));
    var err = span / count / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var k = Math.ceil(lo / step); k * step <= hi + step * 1e-9 && out.length <= 3 * count; k++) {
      out.push(Number((k * step).toPrecision(12)));
    }
    return out;
  }

  function tickLabel(value, kind) {
    if (kind === "cost") return value === 0 ? "$0" : "$" + Number(value).toPrecision(2);
    return Math.abs(value) >= 1000 ? value.toExponential(1) : String(Number(value.toPrecision(4)));
  }

  // The y range leaves out the first evaluations' spikes: every curve's later points decide it.
  // (Points are finite: a diverged evaluation is null in the search's file, and left out.)
  function yRange(series) {
    var all = [], lo = Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p, i) {
        lo = Math.min(lo, p[1]);
        if (i > 0 || s.points.length === 1) all.push(p[1]);
      });
    });
    if (!all.length) return null;
    all.sort(function (a, b) { return a - b; });
    var hi = all[Math.min(all.length - 1, Math.floor(all.length * 0.98))];
    // At least a relative 1e-3 of room: curves that are (nearly) flat still get a readable axis.
    var pad = Math.max((hi - lo) * 0.05, Math.abs(hi) * 1e-3) || 0.05;
    return [lo - pad, hi + pad];
  }

  function plot(svg, series, xKind, best) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 600, H = 280, L = 56, R = 12, T = 10, B = 30;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    var y = yRange(series);
    if (!y) {
      svg.appendChild(el("svg:text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no held-out evaluation yet"));
      return;
    }
    var xMax = 0;
    series.forEach(function (s) { s.points.forEach(function (p) { xMax = Math.max(xMax, p[0]); }); });
    xMax = xMax || 1;
    var sx = function (v) { return L + (W - L - R) * v / xMax; };
    var sy = function (v) { return T + (H - T - B) * (1 - (v - y[0]) / (y[1] - y[0])); };
    ticks(y[0], y[1], 5).forEach(function (v) {
      svg.appendChild(el("svg:line", {"class": "grid", x1: L, x2: W - R, y1: sy(v), y2: sy(v)}));
      svg.appendChild(el("svg:text", {x: L - 6, y: sy(v) + 4, "text-anchor": "end"}, tickLabel(v, "loss")));
    });
    ticks(0, xMax, 6).forEach(function (v) {
      svg.appendChild(el("svg:line", {"class": "grid", x1: sx(v), x2: sx(v), y1: T, y2: H - B}));
      svg.appendChild(el("svg:text", {x: sx(v), y: H - B + 16, "text-anchor": "middle"}, tickLabel(v, xKind)));
    });
    svg.appendChild(el("svg:line", {"class": "axis", x1: L, x2: L, y1: T, y2: H - B}));
    svg.appendChild(el("svg:line", {"class": "axis", x1: L, x2: W - R, y1: H - B, y2: H - B}));
    var clipId = "clip-" + xKind;
    var clip = el("svg:clipPath", {id: clipId});
    clip.appendChild(el("svg:rect", {x: L, y: T, width: W - L - R, height: H - T - B}));
    svg.appendChild(clip);
    series.forEach(function (s) {
      if (!s.points.length) return;
      var d = s.points.map(function (p, i) {
        return (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1);
      }).join("");
      var cls = "curve" + (CUT_SHORT[s.status] ? " ended" : "") + (s.id === best ? " best" : "");
      svg.appendChild(el("svg:path", {"class": cls, d: d, stroke: s.colour, "clip-path": "url(#" + clipId + ")",
                                      "data-config": s.id, "data-points": s.points.length}));
      if (s.points.length === 1) {  // one evaluation (stopped at the first rung) is a dot, not a line
        svg.appendChild(el("svg:circle", {cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3.5, fill: s.colour,
                                          "clip-path": "url(#" + clipId + ")"}));
      }
    });
  }

  function seriesOf(state, xKey) {
    return state.configs.map(function (c, i) {
      return {
        id: c.id, status: c.status, colour: colour(i),
        points: (c.curve || []).filter(function (p) {
          return isFinite(p[xKey]) && p[xKey] !== null && isFinite(p.test_loss) && p.test_loss !== null;
        }).map(function (p) { return [p[xKey], p.test_loss]; })
      };
    });
  }

  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  function summaryItems(state) {
    var counts = {};
    state.configs.forEach(function (c) { counts[c.status] = (counts[c.status] || 0) + 1; });
    var best = state.best, leader = null;
    state.configs.forEach(function (c) {  // while nothing has ended: the best live loss so far
      if (c.best_live_loss !== null && c.best_live_loss !== undefined &&
          (!leader || c.best_live_loss < leader.best_live_loss)) leader = c;
    });
    return [
      ["state", state.state],
      ["configurations", Object.keys(counts).map(function (k) { return counts[k] + " " + k.replace("_", " "); })
        .join(", ") || "–"],
      best ? ["best " + state.metric, fmt(best.metric, 4) + " (" + best.id + ")"]
        : ["best live loss so far", leader ? fmt(leader.best_live_loss, 4) + " (" + leader.id + ")" : "–"],
      ["worker-seconds", fmt(state.worker_seconds_total, 1)],
      ["estimated cost", dollars(state.cost_total_usd)],
      ["early stopping", (state.early_stopping || "–") + (state.resource ? " on " + state.resource : "")]
    ];
  }

  function paramsText(params) {
    return Object.keys(params).sort().map(function (k) { return k + "=" + params[k]; }).join("  ");
  }

  // The page is built once and then updated in place: a button the user is about to click
  // must not be replaced under the pointer by the next redraw.
  function build(root, opts) {
    var parts = {summary: el("div", {"class": "summary"}), plots: {}, rows: {}};
    root.appendChild(parts.summary);
    var plots = el("div", {"class": "plots"});
    [["t", "time", "against training seconds"], ["cost_usd", "cost", "against estimated dollars"]]
      .forEach(function (spec) {
        var box = el("div", {"class": "plot"});
        var heading = el("h3", {});
        box.appendChild(heading);
        var svg = el("svg:svg", {id: "plot-" + spec[1], role: "img"});
        box.appendChild(svg);
        plots.appendChild(box);
        parts.plots[spec[0]] = {svg: svg, kind: spec[1], heading: heading, title: spec[2]};
      });
    root.appendChild(plots);
    var bar = el("div", {"class": "bar"});
    bar.appendChild(el("h2", {}, "Configurations"));
    if (opts.onKill) {
      // Asks by a second click, not window.confirm: the Airflow UI's frame may not allow dialogs.
      var all = el("button", {"data-kill": "all", "data-armed": "0",
                              title: "stop every configuration and end the search"}, "Kill all");
      all.onclick = function () {
        if (all.getAttribute("data-armed") === "1") {
          all.disabled = true;
          opts.onKill(null).catch(function () { all.disabled = false; });
          return;
        }
        all.setAttribute("data-armed", "1");
        all.textContent = "Click again to kill every configuration";
        setTimeout(function () { all.setAttribute("data-armed", "0"); all.textContent = "Kill all"; }, 5000);
      };
      parts.killAll = all;
      bar.appendChild(all);
    }
    root.appendChild(bar);
    parts.table = el("table", {id: "configs"});
    var head = el("tr", {});
    ["configuration", "status", "parameters", "held-out loss", "best live loss", "seconds", "worker-s", "cost"]
      .concat(opts.onKill ? [""] : []).forEach(function (h) { head.appendChild(el("th", {}, h)); });
    parts.table.appendChild(head);
    root.appendChild(parts.table);
    return parts;
  }

  function updateSummary(box, state) {
    summaryItems(state).forEach(function (item, i) {
      if (!box.children[i]) {
        var d = el("div", {});
        d.appendChild(el("span", {}));
        d.appendChild(el("b", {}));
        box.appendChild(d);
      }
      setText(box.children[i].children[0], item[0]);
      setText(box.children[i].children[1], item[1]);
    });
  }

  function row(parts, c, i, opts) {
    var r = parts.rows[c.id];
    if (r) return r;
    r = {tr: el("tr", {"data-config": c.id}), cells: []};
    var name = el("td", {});
    name.appendChild(el("span", {"class": "swatch", style: "background:" + colour(i)}));
    name.appendChild(document.createTextNode(c.id));
    r.tr.appendChild(name);
    var status = el("td", {});
    r.status = el("span", {"class": "status"});
    status.appendChild(r.status);
    r.tr.appendChild(status);
    ["params", "num", "num", "num", "num", "num"].forEach(function (cls) {
      var td = el("td", {"class": cls});
      r.cells.push(td);
      r.tr.appendChild(td);
    });
    if (opts.onKill) {
      r.kill = el("td", {});
      r.tr.appendChild(r.kill);
    }
    parts.table.appendChild(r.tr);
    parts.rows[c.id] = r;
    return r;
  }

  function updateRow(r, c, bestId, opts, live) {
    r.tr.className = c.id === bestId ? "best" : "";
    setText(r.status, c.status.replace("_", " "));
    r.status.className = "status " + c.status;
    r.status.title = c.error || c.stopped_by || "";
    [paramsText(c.params), fmt(c.metric !== null && c.metric !== undefined ? c.metric : c.latest_loss, 4),
     fmt(c.best_live_loss, 4), fmt(c.seconds, 0), fmt(c.worker_seconds, 1), dollars(c.cost_usd)]
      .forEach(function (text, k) { setText(r.cells[k], text); });
    if (!opts.onKill) return;
    var button = r.kill.firstChild;
    if (ENDED[c.status] || !live) {
      if (button) r.kill.removeChild(button);
    } else if (!button) {
      button = el("button", {"data-kill": c.id, title: "stop this configuration"}, "Kill");
      button.onclick = function () {
        button.disabled = true;
        opts.onKill(c.id).catch(function () { button.disabled = false; });  // failed: it may be pressed again
      };
      r.kill.appendChild(button);
    }
    if (button && c.status === "stopping") button.disabled = true;
  }

  function render(root, state, opts) {
    opts = opts || {};
    if (!root.cirrusParts) {
      while (root.firstChild) root.removeChild(root.firstChild);
      root.cirrusParts = build(root, opts);
    }
    var parts = root.cirrusParts;
    var bestId = state.best ? state.best.id : null;
    updateSummary(parts.summary, state);
    Object.keys(parts.plots).forEach(function (x) {
      var p = parts.plots[x], title = "held-out " + (state.metric || "loss") + " " + p.title;
      setText(p.heading, title);
      p.svg.setAttribute("aria-label", title);
      plot(p.svg, seriesOf(state, x), p.kind, bestId);
    });
    var live = state.state === "running";
    if (parts.killAll) parts.killAll.style.display = live ? "" : "none";
    state.configs.forEach(function (c, i) { updateRow(row(parts, c, i, opts), c, bestId, opts, live); });
  }

  return {render: render};
})();
