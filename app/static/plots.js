// Drawing numbers: probability bars, the loss curve, colour scales, maps and filters, histograms.

const COLORS = {
  axis: "#9aa3b2",
  grid: "#e6e9ef",
  text: "#4a5364",
  loss: "rgba(53, 99, 233, 0.35)",
  smooth: "#1f49c7",
  acc: "#d9480f",
  values: "#3563e9",
  grads: "#d9480f",
};

/** Build the ten probability rows once; `update` fills them; `ariaLabel(digit, percent)`. */
export function createBars(list, ariaLabel) {
  const rows = [];
  for (let digit = 0; digit < 10; digit++) {
    const item = document.createElement("li");
    item.className = "bar-row";
    item.innerHTML = `<span class="bar-label">${digit}</span>
      <span class="bar-track"><span class="bar-fill"></span></span>
      <span class="bar-value">–</span>`;
    list.append(item);
    rows.push(item);
  }
  return {
    update(probabilities, predicted) {
      probabilities.forEach((p, digit) => {
        const row = rows[digit];
        const percent = (p * 100).toFixed(1);
        row.querySelector(".bar-fill").style.width = `${Math.max(0, Math.min(100, p * 100))}%`;
        row.querySelector(".bar-value").textContent = `${percent}%`;
        row.classList.toggle("top", digit === predicted);
        row.setAttribute("aria-label", ariaLabel(digit, percent));
      });
    },
    reset() {
      for (const row of rows) {
        row.querySelector(".bar-fill").style.width = "0%";
        row.querySelector(".bar-value").textContent = "–";
        row.classList.remove("top");
        row.removeAttribute("aria-label");
      }
    },
  };
}

function setupHiDpi(canvas) {
  // Keep the chart sharp on high-density screens: draw in CSS pixels on a larger backing store.
  // The laid-out size wins (the loss chart stretches with the page); the attributes are the
  // fallback while the canvas is not laid out (hidden, say).
  const ratio = window.devicePixelRatio || 1;
  canvas.dataset.cssWidth ??= canvas.width;
  canvas.dataset.cssHeight ??= canvas.height;
  const cssWidth = canvas.clientWidth || Number(canvas.dataset.cssWidth);
  const cssHeight = canvas.clientHeight || Number(canvas.dataset.cssHeight);
  if (canvas.width !== Math.round(cssWidth * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width: cssWidth, height: cssHeight };
}

/** Round step numbers for an axis from `first` to `last`: at most about `count` of them. */
export function stepTicks(first, last, count = 5) {
  const span = Math.max(1, last - first);
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const ticks = [];
  for (let v = Math.ceil(first / step) * step; v <= last; v += step) ticks.push(Math.max(1, Math.round(v)));
  return [...new Set(ticks)];
}

/** Loss values to label on a log axis from 10^lo to 10^hi: powers of ten, 1-2-5 when few. */
export function logTicks(lo, hi) {
  const powers = [];
  for (let e = Math.ceil(lo - 1e-9); e <= Math.floor(hi + 1e-9); e++) powers.push(10 ** e);
  if (powers.length >= 2) return powers;
  const ticks = [];
  for (let e = Math.floor(lo) - 1; e <= Math.ceil(hi); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (Math.log10(v) >= lo - 1e-9 && Math.log10(v) <= hi + 1e-9) ticks.push(v);
    }
  }
  return ticks;
}

const tickText = (v) => String(Number(v.toPrecision(2)));

/**
 * The loss per step (log scale, labelled), its moving average, and held-out accuracy on a
 * right axis, with step numbers along x. `losses`: [{step, loss}], `accuracies`: [{step,
 * accuracy}], `labels`: {empty, y, x, acc} in the page's language.
 */
export function drawLossChart(canvas, losses, accuracies, labels) {
  const { ctx, width, height } = setupHiDpi(canvas);
  const pad = { left: 52, right: 44, top: 20, bottom: 34 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  canvas.dataset.points = String(losses.length);
  if (losses.length === 0) {
    delete canvas.dataset.yTicks;
    delete canvas.dataset.xTicks;
    ctx.fillText(labels.empty, pad.left + 8, pad.top + plotH / 2);
    return;
  }
  const first = losses[0].step;
  const last = Math.max(losses[losses.length - 1].step, first + 1);
  const x = (step) => pad.left + ((step - first) / (last - first)) * plotW;
  // Log scale: the interesting part of a loss curve is its tail, orders of magnitude below 2.3.
  const positive = losses.map((d) => Math.max(d.loss, 1e-4));
  const hi = Math.log10(Math.max(...positive, 2.5));
  const lo = Math.min(Math.log10(Math.min(...positive)), hi - 1);
  const y = (loss) => pad.top + ((hi - Math.log10(Math.max(loss, 1e-4))) / (hi - lo)) * plotH;
  const yAcc = (a) => pad.top + (1 - a) * plotH;

  const yTicks = logTicks(lo, hi);
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  for (const value of yTicks) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(value));
    ctx.lineTo(pad.left + plotW, y(value));
    ctx.stroke();
    ctx.fillText(tickText(value), pad.left - 5, y(value) + 4);
  }
  const xTicks = stepTicks(first, last);
  ctx.textAlign = "center";
  for (const step of xTicks) {
    ctx.beginPath();
    ctx.moveTo(x(step), pad.top + plotH);
    ctx.lineTo(x(step), pad.top + plotH + 4);
    ctx.strokeStyle = COLORS.axis;
    ctx.stroke();
    ctx.fillText(String(step), x(step), pad.top + plotH + 15);
  }
  ctx.fillText(labels.x, pad.left + plotW / 2, height - 4);
  ctx.textAlign = "left";
  ctx.fillText(labels.y, 4, 12);
  ctx.textAlign = "right";
  ctx.fillText(labels.acc, width - 2, 12);
  ctx.textAlign = "left";
  canvas.dataset.yTicks = yTicks.map(tickText).join(" ");
  canvas.dataset.xTicks = xTicks.join(" ");
  ctx.strokeStyle = COLORS.axis;
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  for (const a of [0, 0.5, 1]) ctx.fillText(`${a * 100}%`, pad.left + plotW + 6, yAcc(a) + 4);

  ctx.strokeStyle = COLORS.loss;
  ctx.beginPath();
  losses.forEach((d, i) => (i ? ctx.lineTo(x(d.step), y(d.loss)) : ctx.moveTo(x(d.step), y(d.loss))));
  ctx.stroke();

  // Exponential moving average, as training dashboards show it.
  ctx.strokeStyle = COLORS.smooth;
  ctx.lineWidth = 2;
  ctx.beginPath();
  let ema = losses[0].loss;
  losses.forEach((d, i) => {
    ema = i ? 0.9 * ema + 0.1 * d.loss : d.loss;
    i ? ctx.lineTo(x(d.step), y(ema)) : ctx.moveTo(x(d.step), y(ema));
  });
  ctx.stroke();

  const visible = accuracies.filter((d) => d.step >= first);
  if (visible.length) {
    ctx.strokeStyle = COLORS.acc;
    ctx.fillStyle = COLORS.acc;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    visible.forEach((d, i) => (i ? ctx.lineTo(x(d.step), yAcc(d.accuracy)) : ctx.moveTo(x(d.step), yAcc(d.accuracy))));
    ctx.stroke();
    for (const d of visible) {
      ctx.beginPath();
      ctx.arc(x(d.step), yAcc(d.accuracy), 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
  }
}

// ---- fixed colour scales ------------------------------------------------------------------
//
// Every picture of numbers uses a scale fixed in advance, not the largest value of the moment:
// then a colour means the same number before and after training, and growth is visible.

/**
 * A colour scale: `signed` ones are diverging (blue, white, red), the others sequential (dark to
 * bright); `gamma` 0.5 spreads small values (a square-root scale), 1 is linear.
 */
export function makeScale(limit, { signed = true, gamma = 1 } = {}) {
  return { limit, signed, gamma };
}

const SEQUENTIAL = [
  [0, 0, 4],
  [87, 16, 110],
  [188, 55, 84],
  [249, 142, 9],
  [252, 255, 164],
];

/** Where `value` sits on the scale: -1..1 for signed scales, 0..1 otherwise. */
export function scalePosition(value, scale) {
  const lo = scale.signed ? -1 : 0;
  const t = Math.max(lo, Math.min(1, value / scale.limit));
  return Math.sign(t) * Math.abs(t) ** scale.gamma;
}

/** The colour of `value` on `scale`, as [r, g, b]. */
export function colourOf(value, scale) {
  const t = scalePosition(value, scale);
  if (scale.signed) {
    const toward = (c) => Math.round(255 + (c - 255) * Math.abs(t));
    return t >= 0 ? [toward(202), toward(44), toward(36)] : [toward(33), toward(92), toward(196)];
  }
  const at = t * (SEQUENTIAL.length - 1);
  const i = Math.min(SEQUENTIAL.length - 2, Math.floor(at));
  const f = at - i;
  return SEQUENTIAL[i].map((c, k) => Math.round(c + (SEQUENTIAL[i + 1][k] - c) * f));
}

/** The value at position `p` of the scale (the inverse of scalePosition), for tick labels. */
function valueAt(p, scale) {
  return Math.sign(p) * Math.abs(p) ** (1 / scale.gamma) * scale.limit;
}

/** A colour bar for `scale` with its ticks labelled; `note` is written after the last tick. */
export function drawColourBar(canvas, scale) {
  const { ctx, width, height } = setupHiDpi(canvas);
  ctx.clearRect(0, 0, width, height);
  const left = 14;
  const barW = width - 2 * left;
  const lo = scale.signed ? -1 : 0;
  for (let i = 0; i < barW; i++) {
    const p = lo + ((1 - lo) * (i + 0.5)) / barW;
    const [r, g, b] = colourOf(valueAt(p, scale), scale);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(left + i, 0, 1.5, 12);
  }
  ctx.strokeStyle = COLORS.axis;
  ctx.strokeRect(left, 0, barW, 12);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  ctx.textAlign = "center";
  const positions = scale.signed ? [-1, -0.5, 0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1];
  const labels = [];
  for (const p of positions) {
    const value = valueAt(p, scale);
    let text = tickText(value);
    if (p === 1) text = `≥${text}`;
    if (p === -1) text = `≤${text}`;
    labels.push(text);
    const px = left + ((p - lo) / (1 - lo)) * barW;
    ctx.fillRect(px, 12, 1, 3);
    ctx.fillText(text, px, 25);
  }
  ctx.textAlign = "left";
  canvas.dataset.ticks = labels.join(" ");
  canvas.dataset.limit = String(scale.limit);
}

/** Paint a 2-D array of numbers onto `canvas` (sized to fit), one cell per number. */
export function drawMap(canvas, rows, scale, cell = 1) {
  const h = rows.length;
  const w = rows[0].length;
  canvas.width = w * cell;
  canvas.height = h * cell;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w * cell, h * cell);
  for (let y = 0; y < h * cell; y++) {
    for (let x = 0; x < w * cell; x++) {
      const [r, g, b] = colourOf(rows[Math.floor(y / cell)][Math.floor(x / cell)], scale);
      image.data.set([r, g, b, 255], (y * w * cell + x) * 4);
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.dataset.limit = String(scale.limit);
}

/**
 * Draw kernels as a grid of images. `kernels[row][col]` is a k x k array; each cell is drawn
 * `cell` pixels wide with a `gap`, on the fixed `scale`.
 */
export function drawKernels(canvas, kernels, cell, gap, scale) {
  const rows = kernels.length;
  const cols = kernels[0].length;
  const k = kernels[0][0].length;
  const px = cell / k;
  canvas.width = cols * cell + (cols - 1) * gap;
  canvas.height = rows * cell + (rows - 1) * gap;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#f4f6fa";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const x0 = c * (cell + gap);
      const y0 = r * (cell + gap);
      kernels[r][c].forEach((line, i) =>
        line.forEach((value, j) => {
          const [red, green, blue] = colourOf(value, scale);
          ctx.fillStyle = `rgb(${red},${green},${blue})`;
          ctx.fillRect(x0 + j * px, y0 + i * px, Math.ceil(px), Math.ceil(px));
        }),
      );
    }
  }
  canvas.dataset.limit = String(scale.limit);
}

/** A histogram of `values` (a flat array) with `bins` bars, its range written underneath. */
export function drawHistogram(canvas, values, color, emptyText, bins = 40) {
  const { ctx, width, height } = setupHiDpi(canvas);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  if (!values || values.length === 0) {
    ctx.fillText(emptyText, 4, height / 2);
    return;
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi - lo || 1;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(((v - lo) / span) * bins))]++;
  const top = Math.max(...counts);
  const plotH = height - 14;
  const barW = width / bins;
  ctx.fillStyle = color;
  counts.forEach((count, i) => {
    const h = (count / top) * (plotH - 2);
    ctx.fillRect(i * barW + 0.5, plotH - h, Math.max(1, barW - 1), h);
  });
  if (lo < 0 && hi > 0) {
    // Mark zero: whether a distribution is centred or shifted is the first thing to see.
    const zero = ((0 - lo) / span) * width;
    ctx.fillStyle = COLORS.axis;
    ctx.fillRect(zero, 0, 1, plotH);
  }
  ctx.fillStyle = COLORS.text;
  ctx.fillText(lo.toPrecision(2), 1, height - 2);
  const right = hi.toPrecision(2);
  ctx.fillText(right, width - ctx.measureText(right).width - 1, height - 2);
}
