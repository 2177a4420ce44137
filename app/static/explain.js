// Inside your drawing: every layer's output for the current drawing, and which pixels pushed the
// answer (the saliency d logit / d pixel), from POST /explain, on fixed colour scales.

import { throttle } from "./api.js";
import { onLanguageChange, setText, t } from "./i18n.js";
import { colourOf, drawColourBar, drawMap, makeScale, scalePosition } from "./plots.js";

const $ = (id) => document.getElementById(id);
const EXPLAIN_EVERY_MS = 250;

// Fixed scales (values past a limit show in its full colour). ReLU outputs are 0 and up: a
// sequential square-root scale, so that an untrained net's small activations still show and a
// trained net's large ones do not all saturate. Logits and the saliency are signed: diverging.
export const ACTIVATION_SCALE = makeScale(4, { signed: false, gamma: 0.5 });
export const LOGIT_SCALE = makeScale(20, { gamma: 0.5 });
export const SALIENCY_SCALE = makeScale(0.05, { gamma: 0.5 });

// The maps, in the tutorial's forward order: [layer, channels, side, CSS size of one map].
const MAP_LAYERS = [
  ["conv1", 6, 28, 84],
  ["pool1", 6, 14, 56],
  ["conv2", 16, 10, 50],
  ["pool2", 16, 5, 40],
];
const STRIP_LAYERS = [
  ["fc1", 120],
  ["fc2", 84],
];

/** Paint the 32x32 input in gray with the saliency over it: red pushed the class up, blue down. */
function drawSaliency(canvas, image, saliency, scale) {
  const cell = canvas.width / 32;
  const ctx = canvas.getContext("2d");
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const gray = Math.round(Math.max(0, Math.min(1, image[y][x])) * 255);
      const p = scalePosition(saliency[y][x], scale);
      const a = Math.abs(p);
      const [r, g, b] = p >= 0 ? [202, 44, 36] : [33, 92, 196];
      const mix = (c) => Math.round(gray * (1 - a) + c * a);
      ctx.fillStyle = `rgb(${mix(r)},${mix(g)},${mix(b)})`;
      ctx.fillRect(x * cell, y * cell, cell, cell);
    }
  }
}

/** The ten logits as coloured cells with their digit and value. */
function drawLogits(canvas, logits, prediction, scale) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width / 10;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "center";
  logits.forEach((value, digit) => {
    const [r, g, b] = colourOf(value, scale);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(digit * w + 1, 0, w - 2, 30);
    if (digit === prediction) {
      ctx.strokeStyle = "#1d2330";
      ctx.lineWidth = 2;
      ctx.strokeRect(digit * w + 2, 1, w - 4, 28);
    }
    ctx.fillStyle = "#1d2330";
    ctx.fillText(String(digit), digit * w + w / 2, 19);
    ctx.fillStyle = "#4a5364";
    ctx.fillText(value.toFixed(1), digit * w + w / 2, 46);
  });
  ctx.textAlign = "left";
}

/** The view; `update()` is throttled, so call it on every change of the drawing or the weights. */
export function createExplainView({ api, pad, noteVersion, showError }) {
  const maps = {};
  let last = null;
  let large = null; // [layer, channel] shown in the dialog
  let unavailable = false;

  function build() {
    const root = $("activations");
    for (const [layer, channels, side, size] of MAP_LAYERS) {
      const group = document.createElement("div");
      group.className = "layer-maps";
      const title = document.createElement("h3");
      title.dataset.layer = layer;
      const box = document.createElement("div");
      box.className = "maps";
      maps[layer] = [];
      for (let c = 0; c < channels; c++) {
        const canvas = document.createElement("canvas");
        canvas.width = side;
        canvas.height = side;
        canvas.className = "map";
        canvas.dataset.layer = layer;
        canvas.dataset.channel = String(c);
        canvas.tabIndex = 0;
        canvas.setAttribute("role", "button");
        canvas.style.width = `${size}px`;
        canvas.style.height = `${size}px`;
        canvas.addEventListener("click", () => openLarge(layer, c));
        canvas.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            openLarge(layer, c);
          }
        });
        maps[layer].push(canvas);
        box.append(canvas);
      }
      group.append(title, box);
      root.append(group);
    }
    for (const [layer] of STRIP_LAYERS) {
      const group = document.createElement("div");
      group.className = "layer-maps strip-group";
      const title = document.createElement("h3");
      title.dataset.layer = layer;
      const canvas = document.createElement("canvas");
      canvas.className = "strip";
      canvas.dataset.layer = layer;
      canvas.setAttribute("role", "img");
      maps[layer] = [canvas];
      group.append(title, canvas);
      root.append(group);
    }
    labels();
  }

  function logitsLabel(logits) {
    return t("explain.fc3.values", { values: logits.map((v, digit) => `${digit}: ${v.toFixed(4)}`).join(", ") });
  }

  function labels() {
    if (last) $("act-fc3").setAttribute("aria-label", logitsLabel(last.activations.fc3));
    for (const title of $("activations").querySelectorAll("h3[data-layer]")) {
      setText(title, `explain.layer.${title.dataset.layer}`);
    }
    for (const [layer] of MAP_LAYERS) {
      maps[layer].forEach((canvas, c) =>
        canvas.setAttribute("aria-label", t("explain.map.aria", { layer, channel: c })),
      );
    }
    for (const [layer, n] of STRIP_LAYERS) maps[layer][0].setAttribute("aria-label", t("explain.strip.aria", { layer, n }));
  }

  function openLarge(layer, channel) {
    if (!last) return;
    large = [layer, channel];
    const rows = last.activations[layer][channel];
    const canvas = $("map-large");
    drawMap(canvas, rows, ACTIVATION_SCALE, Math.floor(336 / rows.length));
    canvas.dataset.layer = layer;
    canvas.dataset.channel = String(channel);
    const largest = Math.max(...rows.flat());
    setText($("map-dialog-title"), "dialog.title", { layer, channel, side: rows.length, max: largest.toFixed(3) });
    canvas.setAttribute("aria-label", t("explain.map.aria", { layer, channel }));
    const dialog = $("map-dialog");
    if (!dialog.open) dialog.showModal();
  }

  function show(answer, image) {
    last = answer;
    for (const [layer] of MAP_LAYERS) {
      answer.activations[layer].forEach((rows, c) => drawMap(maps[layer][c], rows, ACTIVATION_SCALE));
    }
    for (const [layer] of STRIP_LAYERS) drawMap(maps[layer][0], [answer.activations[layer]], ACTIVATION_SCALE);
    drawLogits($("act-fc3"), answer.activations.fc3, answer.prediction, LOGIT_SCALE);
    $("act-fc3").setAttribute("aria-label", logitsLabel(answer.activations.fc3));
    drawSaliency($("saliency"), image, answer.saliency, SALIENCY_SCALE);
    const view = $("explain-view");
    view.dataset.version = String(answer.version);
    view.dataset.sent = JSON.stringify(image);
    setText($("explain-info"), "explain.answered", {
      target: answer.target,
      version: answer.version,
      step: answer.step,
    });
    if (large && $("map-dialog").open) openLarge(...large);
    noteVersion(answer);
  }

  function blank() {
    last = null;
    const view = $("explain-view");
    delete view.dataset.version;
    delete view.dataset.sent;
    for (const canvas of Object.values(maps).flat()) canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    for (const id of ["act-fc3", "saliency"]) {
      const canvas = $(id);
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    }
    setText($("explain-info"), "explain.empty");
  }

  const update = throttle(async () => {
    if (unavailable) return;
    if (pad.isBlank()) {
      blank();
      return;
    }
    const image = pad.toImage();
    try {
      const answer = await api.post("/explain", { inputs: image });
      if (pad.isBlank()) return; // cleared while the request was in flight
      show(answer, image);
    } catch (error) {
      // A server from before POST /explain: the rest of the page works, this view says why not.
      if (error.status === 404 && !error.detail?.includes("version")) {
        unavailable = true;
        setText($("explain-info"), "explain.unavailable");
      } else showError(error);
    }
  }, EXPLAIN_EVERY_MS);

  build();
  blank();
  drawColourBar($("activation-scale"), ACTIVATION_SCALE);
  drawColourBar($("logit-scale"), LOGIT_SCALE);
  drawColourBar($("saliency-scale"), SALIENCY_SCALE);
  drawColourBar($("map-large-scale"), ACTIVATION_SCALE);
  onLanguageChange(labels);
  return { update };
}
