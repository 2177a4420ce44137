// One step, number by number: one POST /train-step of the drawing, and for one parameter its
// values before, its gradient, the learning rate and its values after, checked against plain
// SGD's rule `after = before - lr * gradient`.

import { describeOptimizer } from "./api.js";
import { onLanguageChange, setText } from "./i18n.js";

const $ = (id) => document.getElementById(id);
// Shown until GET /params names every parameter (the server is the one source of the names).
const DEFAULT_PARAMETER = "conv1.bias";
const ROWS_SHOWN = 10;
// float32 arithmetic: the rule holds to this, relative to the size of the numbers.
const TOLERANCE = 1e-6;

/** Whether `config` updates by plain SGD: no momentum, no weight decay. */
function isPlainSgd(config) {
  return config.name === "sgd" && !config.momentum && !config.weight_decay;
}

/** The view; `onStep()` runs after each step so the other views can follow the new weights. */
export function createStepView({ api, pad, noteVersion, showError, applyOptimizerChoice, isTraining }, onStep) {
  const param = $("step-param");
  const label = $("step-label");
  const showParameters = (names) => {
    const chosen = param.value || DEFAULT_PARAMETER;
    param.replaceChildren(
      ...names.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        return option;
      }),
    );
    param.value = names.includes(chosen) ? chosen : DEFAULT_PARAMETER;
  };
  showParameters([DEFAULT_PARAMETER]);
  api
    .get("/params")
    .then((body) => showParameters(body.parameters.map((p) => p.name)))
    .catch(showError);
  label.replaceChildren(
    ...Array.from({ length: 10 }, (_, digit) => {
      const option = document.createElement("option");
      option.value = String(digit);
      option.textContent = String(digit);
      return option;
    }),
  );
  let blank = true;
  let training = false;

  function enable() {
    $("step-run").disabled = blank || training;
    if (training) setText($("step-status"), "step.training");
    else if (blank) setText($("step-status"), "step.hint");
    else if ($("step-status").dataset.i18n !== "step.done") setText($("step-status"), "step.ready");
  }

  function clear() {
    $("step-table").hidden = true;
    $("step-rows").replaceChildren();
    $("step-verdict").hidden = true;
    setText($("step-status"), blank ? "step.hint" : "step.ready");
  }

  async function run() {
    if (pad.isBlank() || isTraining()) return;
    $("step-run").disabled = true;
    const name = param.value;
    const query = `/params?name=${encodeURIComponent(name)}&values=true`;
    try {
      await applyOptimizerChoice();
      const config = await api.get("/optimizer");
      const before = await api.get(query);
      const answer = await api.post("/train-step", {
        inputs: [pad.toImage()],
        targets: [Number(label.value)],
      });
      const after = await api.get(`${query}&grads=true`);
      noteVersion(after);
      show(name, config, before, answer, after);
      onStep();
    } catch (error) {
      showError(error);
    } finally {
      enable();
    }
  }

  function show(name, config, beforeReport, answer, afterReport) {
    const before = beforeReport.parameters[0].values.flat(Infinity);
    const after = afterReport.parameters[0].values.flat(Infinity);
    const grad = afterReport.parameters[0].grad.flat(Infinity);
    const lr = answer.optimizer.lr;
    let largest = 0;
    let holds = true;
    before.forEach((b, i) => {
      const difference = Math.abs(after[i] - (b - lr * grad[i]));
      largest = Math.max(largest, difference);
      if (difference > TOLERANCE * Math.max(1, Math.abs(b))) holds = false;
    });
    const rows = before.slice(0, ROWS_SHOWN).map((b, i) => {
      const tr = document.createElement("tr");
      for (const text of [
        String(i),
        b.toFixed(8),
        grad[i].toPrecision(7),
        (b - lr * grad[i]).toFixed(8),
        after[i].toFixed(8),
      ]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    $("step-rows").replaceChildren(...rows);
    $("step-table").hidden = false;
    const table = $("step-table");
    table.dataset.lr = String(lr);
    table.dataset.name = name;
    // Nothing else may have stepped between the three requests, or the numbers do not belong together.
    const alone = beforeReport.version + 1 === answer.version && afterReport.version === answer.version;
    setText($("step-status"), "step.done", {
      name,
      loss: answer.loss.toFixed(4),
      lr,
      optimizer: describeOptimizer(config),
      version: answer.version,
      shown: Math.min(ROWS_SHOWN, before.length),
      n: before.length,
    });
    const verdict = $("step-verdict");
    let key;
    if (!alone) key = "step.verdict.interleaved";
    else if (isPlainSgd(config)) key = holds ? "step.verdict.holds" : "step.verdict.broken";
    else key = config.name === "sgd" ? "step.verdict.momentum" : "step.verdict.other";
    setText(verdict, key, { n: before.length, largest: largest.toExponential(1), name: config.name });
    verdict.dataset.holds = String(holds);
    verdict.hidden = false;
  }

  $("step-run").addEventListener("click", run);
  onLanguageChange(enable);
  return {
    drawingChanged(isBlank) {
      blank = isBlank;
      enable();
    },
    trainingChanged(isRunning) {
      training = isRunning;
      enable();
    },
    clear,
  };
}
