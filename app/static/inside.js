// Look inside: the weights (conv filters on fixed colour scales, a histogram of every parameter
// and of its latest gradient) and the architecture, from GET /params and GET /model.

import { throttle } from "./api.js";
import { onLanguageChange, t } from "./i18n.js";
import { drawColourBar, drawHistogram, drawKernels, makeScale } from "./plots.js";

const $ = (id) => document.getElementById(id);
const PARAMS_EVERY_MS = 2000;

// Fixed scales: PyTorch's initial conv1 weights lie within ±0.2 (1/sqrt(25)) and conv2's within
// ±0.08 (1/sqrt(150)); the limits leave room for training to grow them, and values past a limit
// show in its full colour. The scale never follows the largest weight of the moment.
export const CONV1_SCALE = makeScale(0.5);
export const CONV2_SCALE = makeScale(0.25);

const fmt = (x) => (Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(3) : x.toExponential(1));

/** The weights view; `refresh()` is throttled, so call it as often as anything changes. */
export function createInsideView({ api, noteVersion, showError }) {
  const rows = new Map();
  let lastReport = null;

  function histogramRow(name) {
    let row = rows.get(name);
    if (row) return row;
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    const code = document.createElement("code");
    code.textContent = name;
    const shape = document.createElement("div");
    shape.className = "muted small";
    th.append(code, shape);
    const cells = [0, 1].map(() => {
      const td = document.createElement("td");
      const canvas = document.createElement("canvas");
      canvas.width = 240;
      canvas.height = 64;
      canvas.setAttribute("role", "img");
      const note = document.createElement("div");
      note.className = "muted small";
      td.append(canvas, note);
      tr.append(td);
      return { canvas, note };
    });
    tr.prepend(th);
    $("histograms").append(tr);
    row = { name, shape, values: cells[0], grads: cells[1] };
    rows.set(name, row);
    return row;
  }

  function show(report) {
    lastReport = report;
    for (const p of report.parameters) {
      const row = histogramRow(p.name);
      row.shape.textContent = `[${p.shape.join("×")}] ${t("inside.numbers", { n: p.numel.toLocaleString("en") })}`;
      row.values.canvas.setAttribute("aria-label", t("inside.hist.values.aria", { name: p.name }));
      row.grads.canvas.setAttribute("aria-label", t("inside.hist.grad.aria", { name: p.name }));
      row.values.note.textContent = t("inside.stats", { mean: fmt(p.stats.mean), std: fmt(p.stats.std) });
      row.grads.note.textContent = p.grad_stats
        ? t("inside.gradstats", { norm: fmt(p.grad_stats.norm), std: fmt(p.grad_stats.std) })
        : t("inside.nograd");
      drawHistogram(row.values.canvas, p.values.flat(Infinity), "#3563e9", "");
      drawHistogram(row.grads.canvas, p.grad ? p.grad.flat(Infinity) : null, "#d9480f", t("inside.nograd"));
      if (p.name === "conv1.weight") {
        // (6, 1, 5, 5): one row of six filters.
        drawKernels($("conv1-filters"), [p.values.map((filter) => filter[0])], 40, 8, CONV1_SCALE);
      } else if (p.name === "conv2.weight") {
        // (16, 6, 5, 5): filters as columns, their six input channels as rows.
        const kernels = p.values[0].map((_, channel) => p.values.map((filter) => filter[channel]));
        drawKernels($("conv2-filters"), kernels, 25, 4, CONV2_SCALE);
      }
    }
    $("params-info").textContent = `(${t("model.version.short")} ${report.version}, ${t("model.step")} ${report.step})`;
    noteVersion(report);
  }

  const refresh = throttle(async () => {
    try {
      show(await api.get("/params?values=true&grads=true"));
    } catch (error) {
      showError(error);
    }
  }, PARAMS_EVERY_MS);

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
    $("model-device").textContent = `(${model.device}, ${model.dtype})`;
    noteVersion(model);
  }

  drawColourBar($("conv1-scale"), CONV1_SCALE);
  drawColourBar($("conv2-scale"), CONV2_SCALE);
  $("refresh-params").addEventListener("click", () => refresh());
  onLanguageChange(() => {
    if (lastReport) show(lastReport);
  });
  return { refresh, loadModel };
}
