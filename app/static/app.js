// The page: wires the drawing pad, predictions, training, and the views of the weights to the API.

import { createApi, throttle } from "./api.js";
import { loadDigits, Sampler } from "./data.js";
import { DrawPad, paintGray } from "./draw.js";
import { createBars, drawHistogram, drawKernels, drawLossChart } from "./plots.js";

const $ = (id) => document.getElementById(id);

// What "Start training" sets with PUT /optimizer, if the server's optimizer differs. Adam at
// 0.001 gets the held-out accuracy past 80% within about a hundred steps of 32 images; the
// tutorial's plain SGD at 0.01 barely moves in that time.
const OPTIMIZER_PRESETS = {
  adam: { name: "adam", lr: 0.001 },
  "sgd-momentum": { name: "sgd", lr: 0.05, momentum: 0.9 },
  sgd: { name: "sgd", lr: 0.01 },
};
const MAX_CURVE_POINTS = 3000;
const EVAL_EVERY_MS = 1500;
const PARAMS_EVERY_MS = 2000;
const PREDICT_EVERY_MS = 120;

const api = createApi(() => $("token").value);
const bars = createBars($("bars"));
const shown = { version: -1, step: -1 };
const losses = [];
const accuracies = [];
let data = null;
let sampler = null;
let serverOptimizer = null;
let running = false;
let loop = null;

// ---- errors and the model's version -------------------------------------------------------

function showError(error) {
  $("error-text").textContent = error?.message ?? String(error);
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

/** Show the newest version seen in any answer (answers can arrive out of order). */
function noteVersion(answer) {
  if (!answer || typeof answer.version !== "number" || answer.version < shown.version) return;
  shown.version = answer.version;
  shown.step = answer.step;
  $("model-version").textContent = String(answer.version);
  $("model-step").textContent = String(answer.step);
}

// ---- drawing and predicting ---------------------------------------------------------------

const predict = throttle(async () => {
  if (pad.isBlank()) {
    bars.reset();
    $("prediction").textContent = "–";
    $("prediction-info").textContent = "draw something";
    return;
  }
  try {
    const answer = await api.post("/predict", { inputs: pad.toImage() });
    if (pad.isBlank()) return; // cleared while the request was in flight
    const predicted = answer.predictions[0];
    bars.update(answer.probabilities[0], predicted);
    $("prediction").textContent = String(predicted);
    $("prediction-info").textContent =
      `answered by version ${answer.version} (step ${answer.step})`;
    noteVersion(answer);
  } catch (error) {
    showError(error);
  }
}, PREDICT_EVERY_MS);

function onDrawingChanged() {
  const blank = pad.isBlank();
  for (const button of $("label-buttons").querySelectorAll("button")) button.disabled = blank;
  paintGray($("seen"), pad.toImage());
  predict();
}

const pad = new DrawPad($("pad"), () => onDrawingChanged());
$("clear").addEventListener("click", () => pad.clear());

for (let digit = 0; digit < 10; digit++) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = String(digit);
  button.dataset.label = String(digit);
  button.setAttribute("aria-label", `Send the drawing as one training example labelled ${digit}`);
  button.disabled = true;
  button.addEventListener("click", () => teach(digit));
  $("label-buttons").append(button);
}

async function teach(label) {
  if (pad.isBlank()) return;
  const status = $("teach-status");
  try {
    const answer = await api.post("/train-step", { inputs: [pad.toImage()], targets: [label] });
    noteVersion(answer);
    status.textContent =
      `Sent as "${label}": loss ${answer.loss.toFixed(4)} before the update; ` +
      `now step ${answer.step}, version ${answer.version} (${answer.optimizer.name}, ` +
      `lr ${answer.optimizer.lr}).`;
    predict();
    refreshParams();
  } catch (error) {
    status.textContent = `Not sent: ${error.message}`;
    showError(error);
  }
}

// ---- training -----------------------------------------------------------------------------

function describeOptimizer(config) {
  if (!config) return "–";
  const extras = Object.entries(config)
    .filter(([key, value]) => !["name", "lr"].includes(key) && value !== 0 && value !== false)
    .filter(([key]) => ["momentum", "nesterov", "weight_decay"].includes(key))
    .map(([key, value]) => `${key} ${value}`);
  return [`${config.name}, lr ${config.lr}`, ...extras].join(", ");
}

async function loadOptimizer() {
  serverOptimizer = await api.get("/optimizer");
  $("server-optimizer").textContent = describeOptimizer(serverOptimizer);
}

/** PUT /optimizer when the chosen preset differs from the server's optimizer; only on Start. */
async function applyOptimizerChoice() {
  const preset = OPTIMIZER_PRESETS[$("optimizer").value];
  if (!preset) return; // "keep the server's"
  await loadOptimizer();
  const same = Object.entries(preset).every(([key, value]) => serverOptimizer[key] === value);
  if (same) return;
  serverOptimizer = await api.put("/optimizer", preset);
  $("server-optimizer").textContent = describeOptimizer(serverOptimizer);
  $("optimizer-note").textContent = "(set by this page when you pressed Start)";
}

function batchSize() {
  const value = Math.round(Number($("batch-size").value));
  return Math.max(1, Math.min(256, Number.isFinite(value) ? value : 32));
}

let chartQueued = false;
function redrawChart() {
  // At most one redraw per frame, however fast the steps come back.
  if (chartQueued) return;
  chartQueued = true;
  requestAnimationFrame(() => {
    chartQueued = false;
    drawLossChart($("loss-chart"), losses, accuracies);
  });
}

/** Held-out accuracy of the current weights, through POST /predict on the held-out images. */
async function evaluate() {
  if (!data) return;
  const answer = await api.post("/predict", { inputs: data.heldOut.images });
  const correct = answer.predictions.filter((p, i) => p === data.heldOut.labels[i]).length;
  const accuracy = correct / data.heldOut.labels.length;
  accuracies.push({ step: answer.step, accuracy });
  $("accuracy").textContent =
    `${(accuracy * 100).toFixed(1)}% (${correct}/${data.heldOut.labels.length}, step ${answer.step})`;
  noteVersion(answer);
  redrawChart();
}

function setRunning(value) {
  running = value;
  $("start").disabled = value || !data;
  $("stop").disabled = !value;
  $("optimizer").disabled = value;
}

async function trainLoop() {
  $("train-state").textContent = "training";
  const started = performance.now();
  let steps = 0;
  let lastEval = performance.now();
  try {
    while (running) {
      const answer = await api.post("/train-step", sampler.next(batchSize()));
      steps++;
      losses.push({ step: answer.step, loss: answer.loss });
      if (losses.length > MAX_CURVE_POINTS) losses.splice(0, losses.length - MAX_CURVE_POINTS);
      noteVersion(answer);
      $("loss").textContent = `${answer.loss.toFixed(4)} (step ${answer.step})`;
      $("rate").textContent = ((steps * 1000) / (performance.now() - started)).toFixed(1);
      redrawChart();
      refreshParams();
      if (!pad.isBlank()) predict();
      if (performance.now() - lastEval > EVAL_EVERY_MS) {
        lastEval = performance.now();
        await evaluate();
      }
    }
    await evaluate();
  } catch (error) {
    showError(error);
  } finally {
    setRunning(false);
    $("train-state").textContent = "stopped";
  }
}

// Enter in a field must not submit (and reload) the page; the buttons do the work.
$("train-form").addEventListener("submit", (event) => event.preventDefault());

$("start").addEventListener("click", async () => {
  if (running || !data) return;
  hideError();
  setRunning(true);
  $("train-state").textContent = "starting";
  try {
    await applyOptimizerChoice();
  } catch (error) {
    showError(error);
    setRunning(false);
    $("train-state").textContent = "stopped";
    return;
  }
  loop = trainLoop();
});

$("stop").addEventListener("click", async () => {
  if (!running) return;
  running = false;
  $("stop").disabled = true;
  $("train-state").textContent = "stopping";
  await loop;
});

$("reset").addEventListener("click", async () => {
  hideError();
  try {
    const answer = await api.post("/reset");
    noteVersion(answer);
    losses.length = 0;
    accuracies.length = 0;
    $("loss").textContent = "–";
    redrawChart();
    if (!running) await evaluate();
    predict();
    refreshParams();
  } catch (error) {
    showError(error);
  }
});

// ---- looking inside -----------------------------------------------------------------------

const histogramRows = new Map();

function histogramRow(name) {
  let row = histogramRows.get(name);
  if (row) return row;
  const tr = document.createElement("tr");
  tr.innerHTML = `<th scope="row"><code></code><div class="muted small"></div></th>
    <td><canvas width="240" height="64" role="img"></canvas><div class="muted small"></div></td>
    <td><canvas width="240" height="64" role="img"></canvas><div class="muted small"></div></td>`;
  tr.querySelector("code").textContent = name;
  const [values, grads] = tr.querySelectorAll("canvas");
  values.setAttribute("aria-label", `Histogram of ${name}`);
  grads.setAttribute("aria-label", `Histogram of the gradient of ${name}`);
  $("histograms").append(tr);
  row = { tr, values, grads, notes: tr.querySelectorAll("div") };
  histogramRows.set(name, row);
  return row;
}

const fmt = (x) => (Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(3) : x.toExponential(1));

function showParameters(report) {
  for (const p of report.parameters) {
    const row = histogramRow(p.name);
    row.notes[0].textContent = `[${p.shape.join("×")}] ${p.numel.toLocaleString("en")} numbers`;
    row.notes[1].textContent = `mean ${fmt(p.stats.mean)}, std ${fmt(p.stats.std)}`;
    row.notes[2].textContent = p.grad_stats
      ? `norm ${fmt(p.grad_stats.norm)}, std ${fmt(p.grad_stats.std)}`
      : "none yet";
    drawHistogram(row.values, p.values.flat(Infinity), "#3563e9");
    drawHistogram(row.grads, p.grad ? p.grad.flat(Infinity) : null, "#d9480f");
    if (p.name === "conv1.weight") {
      // (6, 1, 5, 5): one row of six filters.
      drawKernels($("conv1-filters"), [p.values.map((filter) => filter[0])], 40, 8);
    } else if (p.name === "conv2.weight") {
      // (16, 6, 5, 5): filters as columns, their six input channels as rows.
      const kernels = p.values[0].map((_, channel) => p.values.map((filter) => filter[channel]));
      drawKernels($("conv2-filters"), kernels, 25, 4);
    }
  }
  $("params-info").textContent = `(version ${report.version}, step ${report.step})`;
  noteVersion(report);
}

const refreshParams = throttle(async () => {
  try {
    showParameters(await api.get("/params?values=true&grads=true"));
  } catch (error) {
    showError(error);
  }
}, PARAMS_EVERY_MS);

$("refresh-params").addEventListener("click", () => refreshParams());

async function loadModel() {
  const model = await api.get("/model");
  $("model-repr").textContent = model.repr;
  $("layers").replaceChildren(
    ...model.layers.map((layer) => {
      const tr = document.createElement("tr");
      for (const text of [
        layer.name,
        layer.type,
        `[${layer.output_shape.join(", ")}]`,
        layer.params.toLocaleString("en"),
      ]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
  $("total-params").textContent = model.parameters.toLocaleString("en");
  $("model-device").textContent = `on ${model.device}, ${model.dtype}`;
  noteVersion(model);
}

// ---- start --------------------------------------------------------------------------------

$("error-dismiss").addEventListener("click", hideError);
window.addEventListener("resize", redrawChart);
drawLossChart($("loss-chart"), losses, accuracies);

async function init() {
  setRunning(false);
  const results = await Promise.allSettled([
    loadModel(),
    loadOptimizer(),
    refreshParams(),
    loadDigits().then((digits) => {
      data = digits;
      sampler = new Sampler(data.train);
      $("data-info").textContent =
        `${data.train.labels.length} training and ${data.heldOut.labels.length} held-out ` +
        "images from scikit-learn's load_digits (8×8, 0..16 scaled to [0, 1]; the server " +
        "resizes them to 32×32).";
      setRunning(false);
    }),
  ]);
  const failed = results.find((result) => result.status === "rejected");
  if (failed) showError(failed.reason);
  if (data) await evaluate().catch(showError);
  document.body.dataset.ready = "true";
}

init();
