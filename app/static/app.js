// The page: wires the drawing pad, predictions, teaching and training to the API; the views of
// what happens inside live in explain.js (one drawing), step.js (one step) and inside.js (weights).

import { createApi, describeOptimizer, throttle } from "./api.js";
import { loadDigits, resizeBilinear, Sampler } from "./data.js";
import { DrawPad, paintGray } from "./draw.js";
import { createExplainView } from "./explain.js";
import { onLanguageChange, setText, setupLanguage, t } from "./i18n.js";
import { createInsideView } from "./inside.js";
import { createBars, drawLossChart } from "./plots.js";
import { createStepView } from "./step.js";

const $ = (id) => document.getElementById(id);

const MAX_CURVE_POINTS = 3000;
const EVAL_EVERY_MS = 1500;
const PREDICT_EVERY_MS = 120;
// Below this top probability the net is guessing: ten classes at about 10% each.
const GUESSING_BELOW = 0.15;
// The loss counts as flat while the last steps average above this share of the first steps.
const FLAT_AFTER_STEPS = 30;
const FLAT_RATIO = 0.93;
const GALLERY_MAX = 48;

setupLanguage($("language"));

const api = createApi(
  () => $("token").value,
  (hasToken) => t(hasToken ? "error.token.wrong" : "error.token.missing"),
);
const bars = createBars($("bars"), (digit, percent) => t("predict.bar.aria", { digit, percent }));
const shown = { version: -1, step: -1 };
const losses = [];
const accuracies = [];
let data = null;
let trainSample = null;
let sampler = null;
let presets = {};
let serverOptimizer = null;
let running = false;
let loop = null;
let lastEvaluation = null;
let undoCheckpoint = null;

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

// ---- the optimizer the page shows is the one that trains ----------------------------------

function fillOptimizerChoices() {
  const select = $("optimizer");
  const chosen = select.value || Object.keys(presets)[0];
  select.replaceChildren(
    ...[...Object.keys(presets), "keep"].map((key) => {
      const option = document.createElement("option");
      option.value = key;
      const note = t(`preset.${key}`);
      option.textContent = key === "keep" ? note : `${describeOptimizer(presets[key])} ${note}`;
      return option;
    }),
  );
  select.value = chosen in presets || chosen === "keep" ? chosen : Object.keys(presets)[0];
}

function showServerOptimizer() {
  $("server-optimizer").textContent = describeOptimizer(serverOptimizer);
  if ($("optimizer").value === "keep" && serverOptimizer) $("lr").value = String(serverOptimizer.lr);
}

async function loadOptimizers() {
  const [catalogue, current] = await Promise.all([api.get("/optimizers"), api.get("/optimizer")]);
  presets = catalogue.presets;
  serverOptimizer = current;
  fillOptimizerChoices();
  $("lr").value = String(presets[$("optimizer").value]?.lr ?? current.lr);
  showServerOptimizer();
}

$("optimizer").addEventListener("change", () => {
  const preset = presets[$("optimizer").value];
  $("lr").disabled = !preset;
  if (preset) $("lr").value = String(preset.lr);
  showServerOptimizer();
});

/** The PUT /optimizer body the page shows (preset and learning rate), or null for "keep". */
function chosenOptimizer() {
  const preset = presets[$("optimizer").value];
  if (!preset) return null;
  const lr = Number($("lr").value);
  if (!(lr > 0)) throw new Error(t("train.badlr", { value: $("lr").value }));
  return { ...preset, lr };
}

/** PUT /optimizer when the shown choice differs from the server's; before any step the page takes. */
async function applyOptimizerChoice() {
  const wanted = chosenOptimizer();
  if (!wanted) return;
  serverOptimizer = await api.get("/optimizer");
  const same = Object.entries(wanted).every(
    ([key, value]) => JSON.stringify(serverOptimizer[key]) === JSON.stringify(value),
  );
  if (!same) {
    serverOptimizer = await api.put("/optimizer", wanted);
    setText($("optimizer-note"), "train.optimizer.set");
  }
  showServerOptimizer();
}

// ---- drawing and predicting ---------------------------------------------------------------

function showGuess(probabilities, predicted) {
  const guessing = Math.max(...probabilities) < GUESSING_BELOW;
  $("untrained-note").hidden = !guessing;
  $("prediction-mini").textContent = guessing ? `${predicted}?` : String(predicted);
}

function showNoPrediction() {
  bars.reset();
  $("prediction").textContent = "–";
  $("prediction-mini").textContent = "–";
  $("untrained-note").hidden = true;
  setText($("prediction-info"), "predict.empty");
}

const predict = throttle(async () => {
  if (pad.isBlank()) {
    showNoPrediction();
    return;
  }
  try {
    const answer = await api.post("/predict", { inputs: pad.toImage() });
    if (pad.isBlank()) return; // cleared while the request was in flight
    const predicted = answer.predictions[0];
    bars.update(answer.probabilities[0], predicted);
    $("prediction").textContent = String(predicted);
    showGuess(answer.probabilities[0], predicted);
    setText($("prediction-info"), "predict.answered", { version: answer.version, step: answer.step });
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
  explain.update();
  step.drawingChanged(blank);
}

const pad = new DrawPad($("pad"), () => onDrawingChanged());
$("clear").addEventListener("click", () => pad.clear());

const context = { api, pad, noteVersion, showError, applyOptimizerChoice, isTraining: () => running };
const explain = createExplainView(context);
const inside = createInsideView(context);
const step = createStepView(context, () => {
  predict();
  explain.update();
  inside.refresh();
});

function labelButtons() {
  for (const button of $("label-buttons").querySelectorAll("button")) {
    button.setAttribute("aria-label", t("teach.button.aria", { digit: button.dataset.label }));
  }
}

for (let digit = 0; digit < 10; digit++) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = String(digit);
  button.dataset.label = String(digit);
  button.disabled = true;
  button.addEventListener("click", () => teach(digit));
  $("label-buttons").append(button);
}
labelButtons();

async function teach(label) {
  if (pad.isBlank()) return;
  const status = $("teach-status");
  try {
    await applyOptimizerChoice();
    const answer = await api.post("/train-step", { inputs: [pad.toImage()], targets: [label] });
    noteVersion(answer);
    setText(status, "teach.sent", {
      label,
      loss: answer.loss.toFixed(4),
      step: answer.step,
      version: answer.version,
      optimizer: describeOptimizer(answer.optimizer),
    });
    predict();
    explain.update();
    inside.refresh();
  } catch (error) {
    setText(status, "teach.failed", { message: error.message });
    showError(error);
  }
}

// ---- training -----------------------------------------------------------------------------

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
    drawLossChart($("loss-chart"), losses, accuracies, {
      empty: t("chart.empty"),
      x: t("chart.x"),
      y: t("chart.y"),
      acc: t("chart.yacc"),
    });
    showFlatNote();
  });
}

function showFlatNote() {
  let flat = false;
  if (losses.length >= FLAT_AFTER_STEPS) {
    const mean = (part) => part.reduce((sum, d) => sum + d.loss, 0) / part.length;
    flat = mean(losses.slice(-10)) > FLAT_RATIO * mean(losses.slice(0, 10));
  }
  $("flat-note").hidden = !flat;
}

function showAccuracy(element, correct, total, stepNumber) {
  const percent = ((correct / total) * 100).toFixed(1);
  setText(element, "stats.accuracy.value", { percent, correct, total, step: stepNumber });
}

/** Held-out and training accuracy of the current weights, through POST /predict. */
async function evaluate() {
  if (!data) return;
  const [heldOut, training] = await Promise.all([
    api.post("/predict", { inputs: data.heldOut.images }),
    api.post("/predict", { inputs: trainSample.images }),
  ]);
  const correct = heldOut.predictions.filter((p, i) => p === data.heldOut.labels[i]).length;
  const trainCorrect = training.predictions.filter((p, i) => p === trainSample.labels[i]).length;
  accuracies.push({ step: heldOut.step, accuracy: correct / data.heldOut.labels.length });
  showAccuracy($("accuracy"), correct, data.heldOut.labels.length, heldOut.step);
  showAccuracy($("train-accuracy"), trainCorrect, trainSample.labels.length, training.step);
  lastEvaluation = { predictions: heldOut.predictions, step: heldOut.step };
  showMistakes();
  noteVersion(heldOut);
  redrawChart();
}

/** The confusion matrix and the gallery of misclassified held-out digits, from the last evaluation. */
function showMistakes() {
  const table = $("confusion");
  const gallery = $("gallery");
  if (!lastEvaluation || !data) {
    table.replaceChildren();
    gallery.replaceChildren();
    setText($("gallery-info"), "gallery.hint");
    return;
  }
  const labels = data.heldOut.labels;
  const counts = Array.from({ length: 10 }, () => new Array(10).fill(0));
  lastEvaluation.predictions.forEach((p, i) => counts[labels[i]][p]++);
  const rowTotal = counts.map((row) => row.reduce((a, b) => a + b, 0));
  const head = document.createElement("tr");
  const corner = document.createElement("th");
  corner.textContent = t("confusion.corner");
  corner.scope = "col";
  head.append(corner);
  for (let p = 0; p < 10; p++) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = String(p);
    head.append(th);
  }
  const rows = counts.map((row, truth) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = String(truth);
    tr.append(th);
    row.forEach((count, p) => {
      const td = document.createElement("td");
      td.textContent = String(count);
      const share = count / Math.max(1, rowTotal[truth]);
      // Blue on the diagonal (right), orange off it (wrong); setting style from JS is CSP-safe.
      const rgb = truth === p ? "53, 99, 233" : "217, 72, 15";
      if (count) td.style.backgroundColor = `rgba(${rgb}, ${Math.max(0.08, share).toFixed(2)})`;
      if (share > 0.55) td.classList.add("dark");
      td.setAttribute("aria-label", t("confusion.cell.aria", { truth, p, count }));
      tr.append(td);
    });
    return tr;
  });
  table.replaceChildren(head, ...rows);
  table.dataset.step = String(lastEvaluation.step);

  const wrong = [];
  lastEvaluation.predictions.forEach((p, i) => {
    if (p !== labels[i]) wrong.push(i);
  });
  setText($("gallery-info"), "gallery.count", { wrong: wrong.length, total: labels.length });
  gallery.replaceChildren(
    ...wrong.slice(0, GALLERY_MAX).map((i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "digit";
      button.dataset.index = String(i);
      button.dataset.truth = String(labels[i]);
      button.dataset.predicted = String(lastEvaluation.predictions[i]);
      const label = t("gallery.item", { truth: labels[i], p: lastEvaluation.predictions[i] });
      button.setAttribute("aria-label", label);
      button.title = label;
      const canvas = document.createElement("canvas");
      paintGray(canvas, data.heldOut.images[i]);
      const caption = document.createElement("span");
      caption.textContent = `${labels[i]}→${lastEvaluation.predictions[i]}`;
      button.append(canvas, caption);
      button.addEventListener("click", () => {
        pad.loadImage(resizeBilinear(data.heldOut.images[i]));
        $("pad").scrollIntoView({ block: "center", behavior: "smooth" });
      });
      return button;
    }),
  );
}

function showEpoch() {
  $("epoch").textContent = sampler ? sampler.epochs().toFixed(2) : "–";
}

function setRunning(value) {
  running = value;
  $("start").disabled = value || !data;
  $("stop").disabled = !value;
  $("optimizer").disabled = value;
  $("lr").disabled = value || !presets[$("optimizer").value];
  step.trainingChanged(value);
}

function setState(key) {
  setText($("train-state"), key);
}

async function trainLoop() {
  setState("state.training");
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
      setText($("loss"), "stats.loss.value", { loss: answer.loss.toFixed(4), step: answer.step });
      $("rate").textContent = ((steps * 1000) / (performance.now() - started)).toFixed(1);
      showEpoch();
      redrawChart();
      inside.refresh();
      if (!pad.isBlank()) {
        predict();
        explain.update();
      }
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
    setState("state.stopped");
  }
}

// Enter in a field must not submit (and reload) the page; the buttons do the work.
$("train-form").addEventListener("submit", (event) => event.preventDefault());

$("start").addEventListener("click", async () => {
  if (running || !data) return;
  hideError();
  setRunning(true);
  setState("state.starting");
  // The curve is what to watch now: on a small screen, bring it into sight (just below the buttons).
  $("loss-chart").scrollIntoView({ block: "nearest" });
  try {
    await applyOptimizerChoice();
  } catch (error) {
    showError(error);
    setRunning(false);
    setState("state.stopped");
    return;
  }
  loop = trainLoop();
});

async function stopTraining() {
  if (!running) return;
  running = false;
  $("stop").disabled = true;
  setState("state.stopping");
  await loop;
}

$("stop").addEventListener("click", stopTraining);

// ---- reset, asked first and undoable -------------------------------------------------------

/** Forget every figure computed from weights that are gone, and compute them again. */
async function clearFigures() {
  losses.length = 0;
  accuracies.length = 0;
  lastEvaluation = null;
  for (const id of ["loss", "accuracy", "train-accuracy"]) {
    delete $(id).dataset.i18n;
    $(id).textContent = "–";
  }
  $("rate").textContent = "–";
  if (data) sampler = new Sampler(data.train);
  showEpoch();
  showMistakes();
  step.clear();
  redrawChart();
  await evaluate().catch(showError);
  predict();
  explain.update();
  inside.refresh();
}

$("reset").addEventListener("click", () => {
  $("reset-done").hidden = true;
  $("reset-confirm").hidden = false;
  $("reset-yes").focus();
});

$("reset-no").addEventListener("click", () => {
  $("reset-confirm").hidden = true;
});

$("reset-yes").addEventListener("click", async () => {
  $("reset-confirm").hidden = true;
  hideError();
  try {
    await stopTraining();
    // A checkpoint first, so that Undo can bring these weights and this optimizer state back.
    const saved = await api.post("/checkpoints");
    const answer = await api.post("/reset");
    noteVersion(answer);
    undoCheckpoint = saved;
    setText($("reset-done-text"), "reset.done", { version: saved.version, step: saved.step });
    $("undo").hidden = false;
    $("reset-done").hidden = false;
    await clearFigures();
  } catch (error) {
    showError(error);
  }
});

$("undo").addEventListener("click", async () => {
  if (!undoCheckpoint) return;
  hideError();
  try {
    await stopTraining();
    const answer = await api.post(`/checkpoints/${encodeURIComponent(undoCheckpoint.id)}/restore`);
    noteVersion(answer);
    setText($("reset-done-text"), "reset.undone", { step: undoCheckpoint.step });
    $("undo").hidden = true;
    undoCheckpoint = null;
    await clearFigures();
  } catch (error) {
    showError(error);
  }
});

// ---- start --------------------------------------------------------------------------------

$("error-dismiss").addEventListener("click", hideError);
window.addEventListener("resize", redrawChart);
onLanguageChange(() => {
  redrawChart();
  fillOptimizerChoices();
  labelButtons();
  showMistakes();
  showEpoch();
});
redrawChart();

async function init() {
  setRunning(false);
  const results = await Promise.allSettled([
    inside.loadModel(),
    loadOptimizers(),
    inside.refresh(),
    loadDigits().then((digits) => {
      data = digits;
      // A fixed sample of the training digits, as many as held out, for the training accuracy.
      const n = digits.heldOut.labels.length;
      trainSample = { images: digits.train.images.slice(0, n), labels: digits.train.labels.slice(0, n) };
      sampler = new Sampler(data.train);
      setText($("data-info"), "train.data", {
        train: data.train.labels.length,
        heldout: data.heldOut.labels.length,
      });
      showEpoch();
    }),
  ]);
  setRunning(false);
  const failed = results.find((result) => result.status === "rejected");
  if (failed) showError(failed.reason);
  if (data) await evaluate().catch(showError);
  document.body.dataset.ready = "true";
}

init();
