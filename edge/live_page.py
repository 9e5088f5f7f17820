"""The live page that `feredge run --serve` shows: plain HTML, CSS and JavaScript in one string.

Nothing is fetched from anywhere but the device itself (no CDN, no npm, no build step), so the page
works on a Pi with no internet and adds no dependency. It reads three of the server's endpoints
(see live_server.MjpegServer): `/stream` for the picture, `/events` for the per-frame record and the run's
facts, `/snapshot.jpg` to freeze and save a frame. Card labels use the overlay's colours (render.COLOURS).
"""
from __future__ import annotations

import html
import json

from feredge.edge.render import COLOURS


def css_colours() -> dict[str, str]:
    """The overlay's BGR colours per label as CSS rgb(), so a card matches its box on the picture."""
    return {label: f"rgb({r},{g},{b})" for label, (b, g, r) in COLOURS.items()}


def render_page(title: str = "feredge") -> bytes:
    """The page as UTF-8 bytes, with `title` escaped into it."""
    return (PAGE.replace("__TITLE__", html.escape(title))
            .replace("__COLOURS__", json.dumps(css_colours()))
            .encode("utf-8"))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ live view</title>
<style>
:root{--bg:#0f1113;--panel:#181b1f;--line:#2a2f35;--text:#e8e8e8;--dim:#9aa1a9}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:14px/1.4 system-ui,"Segoe UI",Roboto,sans-serif}
header{display:flex;align-items:center;gap:12px;padding:8px 16px;border-bottom:1px solid var(--line)}
header h1{font-size:17px;margin:0;font-weight:600}
.spacer{flex:1}
#status{font-size:12px;padding:2px 8px;border-radius:10px;background:#333;color:#ccc}
#status.live{background:#1b5e20;color:#c8f7c5}#status.paused{background:#6d4c00;color:#ffe9a8}
#status.down{background:#7f1d1d;color:#ffd0d0}
#fps{font-variant-numeric:tabular-nums;font-weight:600;min-width:6em;text-align:right}
button,a.button{background:#2a3036;color:var(--text);border:1px solid #3b424a;border-radius:6px;padding:5px 12px;
 font:inherit;cursor:pointer;text-decoration:none}
button:hover,a.button:hover{background:#343b42}
main{display:grid;grid-template-columns:minmax(0,1fr) 360px;gap:16px;padding:16px}
@media (max-width:900px){main{grid-template-columns:1fr}}
#viewbox{background:#000;border-radius:8px;overflow:hidden;display:flex;justify-content:center}
#view{display:block;width:100%;height:auto;max-height:calc(100vh - 110px);object-fit:contain}
#imgsize{color:var(--dim);font-size:12px;margin:6px 2px}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:10px 12px;margin-bottom:12px}
.panel h2{font-size:11px;text-transform:uppercase;letter-spacing:.08em;color:var(--dim);margin:0 0 8px;font-weight:600}
.empty{color:var(--dim);margin:0}
.card{border-left:5px solid #888;background:#121518;border-radius:5px;padding:6px 10px 8px;margin-bottom:8px}
.card .head{display:flex;justify-content:space-between;align-items:baseline;gap:8px}
.card .label{font-size:20px;font-weight:700}
.card .track{color:var(--dim);font-size:12px}
.card .facts{color:var(--dim);font-size:12px;margin:2px 0 6px}
.card .facts b{color:var(--text);font-weight:600}
.bar{display:grid;grid-template-columns:70px 1fr 42px;gap:6px;align-items:center;font-size:12px;line-height:16px}
.bar .track{height:9px;background:#262b31;border-radius:4px;overflow:hidden}
.bar .fill{height:100%;border-radius:4px}
.bar .v{text-align:right;color:var(--dim);font-variant-numeric:tabular-nums}
#chart{width:100%;height:150px;display:block}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;color:var(--dim);margin-top:6px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 12px;margin:0;font-size:13px}
dt{color:var(--dim)}dd{margin:0;overflow-wrap:anywhere}
</style></head>
<body>
<header><h1>__TITLE__</h1><span id="status">connecting</span><span class="spacer"></span>
<span id="fps">&ndash; FPS</span>
<button id="pause" type="button" title="freeze the picture and the cards (space)">Pause</button>
<a id="save" class="button" href="/snapshot.jpg" download="feredge-snapshot.jpg">Save snapshot</a></header>
<main>
<section><div id="viewbox"><img src="/stream" id="view" alt="live view" data-natural-width="0"></div>
<p id="imgsize">waiting for the stream</p></section>
<aside>
<div class="panel"><h2>Faces</h2><div id="faces"><p class="empty">waiting for the first frame</p></div></div>
<div class="panel"><h2>Frame rate and stage times</h2><canvas id="chart"></canvas>
<div id="legend" class="legend"></div></div>
<div class="panel"><h2>Run</h2><dl id="info"></dl></div>
</aside></main>
<script>
"use strict";
const COLOURS = __COLOURS__;
const FALLBACK = Object.values(COLOURS);
const STAGE_COLOURS = {capture: "#8d6e63", detect: "#42a5f5", preprocess: "#ab47bc", infer: "#ef5350",
                       smooth: "#66bb6a", draw: "#ffca28", temporal: "#26c6da"};
const HISTORY = 60;  // chart points: one per server window of about half a second, so 30 s
const $ = (id) => document.getElementById(id);
let paused = false, latest = null, lastWindow = null, lastMessage = 0, frozenUrl = null;
const history = [];

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
const colourOf = (label, i) => COLOURS[label] || FALLBACK[Math.max(i, 0) % FALLBACK.length];
const pct = (p) => (100 * p).toFixed(0) + "%";

function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = cls; }

// One card per face: what the overlay shows (the clip label once there is one, else the smoothed
// label), this frame's label and confidence, and a bar per class of this frame's probabilities.
function card(face, labels, frame, temporal) {
  const shown = face.temporal_label || face.smoothed_label;
  const c = el("div", "card");
  Object.assign(c.dataset, {track: face.track, label: face.label, smoothed: face.smoothed_label, frame: frame});
  if ("temporal_label" in face) c.dataset.temporal = face.temporal_label || "";
  c.style.borderLeftColor = colourOf(shown, labels.indexOf(shown));
  const head = el("div", "head");
  const big = el("span", "label", shown);
  big.style.color = colourOf(shown, labels.indexOf(shown));
  head.append(big, el("span", "track", "track " + face.track));
  const facts = el("div", "facts");
  const fact = (name, value) => { facts.append(name + " "); facts.append(el("b", "", value)); facts.append("  "); };
  fact("this frame", face.label + " " + pct(face.confidence));
  fact("smoothed", face.smoothed_label);
  if (temporal || "temporal_label" in face) fact("clip", face.temporal_label || "filling");
  c.append(head, facts);
  face.probabilities.forEach((p, i) => {
    const name = labels[i] || ("class " + i);
    const row = el("div", "bar");
    const track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = (100 * Math.min(Math.max(p, 0), 1)).toFixed(1) + "%";
    fill.style.background = colourOf(name, i);
    track.append(fill);
    row.append(el("span", "", name), track, el("span", "v", pct(p)));
    c.append(row);
  });
  return c;
}

function renderFaces(state) {
  const box = $("faces"), result = state.result, labels = (state.run && state.run.labels) || [];
  if (!result) { box.replaceChildren(el("p", "empty", "waiting for the first frame")); return; }
  if (!result.faces.length) { box.replaceChildren(el("p", "empty", "no face in frame " + result.frame)); return; }
  const temporal = Boolean(state.run && state.run.temporal);  // the clip label comes once a track has T frames
  box.replaceChildren(...result.faces.map((f) => card(f, labels, result.frame, temporal)));
}

function renderInfo(state) {
  const run = state.run || {}, rows = [];
  const add = (name, value) => { if (value !== undefined && value !== null && value !== "") rows.push([name, value]); };
  add("backend", run.backend);
  add("artifact", run.artifact && run.file ? run.artifact + " (" + run.file + ")" : run.artifact);
  add("precision", run.precision);
  add("threads", run.threads);
  add("source", run.source);
  add("detector", run.detector);
  add("smoothing", run.smoothing);
  add("temporal", run.temporal);
  if (state.image) add("picture", state.image[0] + " \\u00d7 " + state.image[1] + " px");
  add("frames", state.frames);
  add("watching", state.viewers + " stream, " + state.pages + " page" + (state.pages === 1 ? "" : "s"));
  if (state.stream) add("stream", "JPEG q" + state.stream.quality + ", "
                        + (state.stream.max_fps ? "at most " + state.stream.max_fps + " fps" : "every frame"));
  $("info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
}

function drawChart() {
  const canvas = $("chart"), dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = {l: 56, r: 50, t: 8, b: 14}, pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const stages = Object.keys(STAGE_COLOURS).filter((s) => history.some((p) => p.stage_ms && s in p.stage_ms));
  const total = (p) => stages.reduce((sum, s) => sum + (p.stage_ms[s] || 0), 0);
  // scales from the 90th percentile: one slow window (the model's first frames) does not flatten the rest
  const top = (values) => Math.max(1, values.slice().sort((a, b) => a - b)[Math.floor(0.9 * (values.length - 1))] || 1);
  const maxMs = top(history.map(total)) * 1.3, maxFps = top(history.map((p) => p.fps)) * 1.3;
  const slot = pw / HISTORY, x0 = pad.l + pw - history.length * slot;
  ctx.strokeStyle = "#2a2f35"; ctx.lineWidth = 1;
  for (let k = 0; k <= 2; k++) {  // grid lines at 0, half and full scale
    const y = pad.t + ph * k / 2;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke();
  }
  history.forEach((p, i) => {  // stacked stage times, one column per window
    let y = pad.t + ph;
    for (const s of stages) {
      const bar = Math.min(y - pad.t, ph * (p.stage_ms[s] || 0) / maxMs);  // clipped at the top
      ctx.fillStyle = STAGE_COLOURS[s];
      ctx.fillRect(x0 + i * slot, y - bar, Math.max(1, slot - 0.5), bar);
      y -= bar;
    }
  });
  ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1.5; ctx.beginPath();
  history.forEach((p, i) => {
    const x = x0 + (i + 0.5) * slot, y = pad.t + ph * (1 - Math.min(p.fps / maxFps, 1));
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#9aa1a9"; ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.fillText(maxMs.toFixed(maxMs < 10 ? 1 : 0) + " ms", pad.l - 3, pad.t + 9);
  ctx.fillText("0", pad.l - 3, pad.t + ph);
  ctx.textAlign = "left"; ctx.fillText(maxFps.toFixed(0) + " fps", pad.l + pw + 3, pad.t + 9);
  ctx.fillText("0", pad.l + pw + 3, pad.t + ph);
  const last = history[history.length - 1];
  const ms = (s) => (last && last.stage_ms[s] !== undefined ? last.stage_ms[s].toFixed(2) : "\\u2013") + " ms";
  const items = [["#ffffff", "FPS " + (last ? last.fps.toFixed(1) : "\\u2013")]]
    .concat(stages.map((s) => [STAGE_COLOURS[s], s + " " + ms(s)]));
  $("legend").replaceChildren(...items.map(([colour, text]) => {
    const span = el("span", "", text), dot = el("i");
    dot.style.background = colour;
    span.prepend(dot);
    return span;
  }));
}

function render(state) {
  renderFaces(state);
  renderInfo(state);
  if (state.fps !== null && state.fps !== undefined) $("fps").textContent = state.fps.toFixed(1) + " FPS";
  drawChart();
}

function receive(state) {
  latest = state;
  lastMessage = Date.now();
  if (state.window !== null && state.window !== lastWindow && state.stage_ms) {
    lastWindow = state.window;
    history.push({fps: state.fps, stage_ms: state.stage_ms});
    if (history.length > HISTORY) history.shift();
  }
  if (!paused) { setStatus("live", "live"); render(state); }
}

// Pause freezes the picture as it is on the screen (copied to a still, which also ends the stream
// and spares the device) and the cards; Save then saves that still. Before any picture came, the
// still is the server's /snapshot.jpg.
async function still(img) {
  if (!img.naturalWidth) {
    const reply = await fetch("/snapshot.jpg", {cache: "no-store"});
    if (!reply.ok) throw new Error("the server has no frame yet");
    return reply.blob();
  }
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  canvas.getContext("2d").drawImage(img, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.95));
}

async function setPaused(on) {
  paused = on;
  $("pause").textContent = on ? "Resume" : "Pause";
  document.body.dataset.paused = on ? "1" : "0";
  const img = $("view"), save = $("save");
  if (on) {
    setStatus("paused", "paused");
    try {
      const blob = await still(img);
      if (!paused) return;
      frozenUrl = URL.createObjectURL(blob);
      img.src = frozenUrl;
      save.href = frozenUrl;
      save.download = "feredge-frame-" + (latest && latest.result ? latest.result.frame : "paused") + ".jpg";
    } catch (err) { setStatus("paused (" + err.message + ")", "paused"); }
  } else {
    img.src = "/stream?" + Date.now();
    save.href = "/snapshot.jpg";
    save.download = "feredge-snapshot.jpg";
    if (frozenUrl) { URL.revokeObjectURL(frozenUrl); frozenUrl = null; }
    if (latest) receive(latest);
  }
}

function noteImage() {  // the picture's real size, for the caption (and for tests reading the DOM)
  const img = $("view");
  if (!img.naturalWidth) return;
  img.dataset.naturalWidth = img.naturalWidth;
  img.dataset.naturalHeight = img.naturalHeight;
  $("imgsize").textContent = img.naturalWidth + " \\u00d7 " + img.naturalHeight + " px" + (paused ? ", paused" : "");
}

$("pause").addEventListener("click", () => setPaused(!paused));
document.addEventListener("keydown", (e) => {  // space pauses, as in a video player
  if (e.key === " " && e.target === document.body) { e.preventDefault(); setPaused(!paused); }
});
$("view").addEventListener("load", noteImage);
setInterval(noteImage, 500);
setInterval(() => {
  if (!paused && lastMessage && Date.now() - lastMessage > 3000) setStatus("no new frames", "down");
}, 1000);
window.addEventListener("resize", drawChart);
const events = new EventSource("/events");
events.onmessage = (e) => receive(JSON.parse(e.data));
events.onerror = () => { if (!paused) setStatus("disconnected, retrying", "down"); };
</script>
</body></html>
"""
