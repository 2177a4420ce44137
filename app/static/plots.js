// Drawing numbers: probability bars, the loss curve, filters as images, histograms.

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

/** Build the ten probability rows once; `update` fills them. */
export function createBars(list) {
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
        row.setAttribute("aria-label", `${digit}: ${percent} percent`);
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

/**
 * The loss per step (log scale), its moving average, and held-out accuracy on a right axis.
 * `losses`: [{step, loss}], `accuracies`: [{step, accuracy}].
 */
export function drawLossChart(canvas, losses, accuracies) {
  const { ctx, width, height } = setupHiDpi(canvas);
  const pad = { left: 46, right: 46, top: 12, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  canvas.dataset.points = String(losses.length);
  if (losses.length === 0) {
    ctx.fillText("Start training to see the loss per step.", pad.left + 8, pad.top + plotH / 2);
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

  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  for (let e = Math.floor(lo); e <= Math.floor(hi); e++) {
    for (const m of [1, 2, 5]) {
      const value = m * 10 ** e;
      if (Math.log10(value) < lo || Math.log10(value) > hi) continue;
      ctx.beginPath();
      ctx.moveTo(pad.left, y(value));
      ctx.lineTo(pad.left + plotW, y(value));
      ctx.stroke();
      ctx.fillText(String(Number(value.toPrecision(2))), 4, y(value) + 4);
    }
  }
  ctx.strokeStyle = COLORS.axis;
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  for (const a of [0, 0.5, 1]) ctx.fillText(`${a * 100}%`, pad.left + plotW + 6, yAcc(a) + 4);
  ctx.fillText(`step ${first}`, pad.left, height - 8);
  const lastLabel = `step ${last}`;
  ctx.fillText(lastLabel, pad.left + plotW - ctx.measureText(lastLabel).width, height - 8);

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

function diverging(value, scale) {
  // Blue (negative) through white (zero) to red (positive), symmetric around zero.
  const t = Math.max(-1, Math.min(1, value / (scale || 1)));
  const toward = (c) => Math.round(255 + (c - 255) * Math.abs(t));
  return t >= 0 ? [toward(202), toward(44), toward(36)] : [toward(33), toward(92), toward(196)];
}

function maxAbs(values) {
  let m = 0;
  for (const v of values) m = Math.max(m, Math.abs(v));
  return m;
}

/**
 * Draw kernels as a grid of images. `kernels[row][col]` is a k x k array; each cell is drawn
 * `cell` pixels wide with a `gap`, colours scaled to the largest magnitude in the whole layer.
 */
export function drawKernels(canvas, kernels, cell, gap) {
  const rows = kernels.length;
  const cols = kernels[0].length;
  const k = kernels[0][0].length;
  const px = cell / k;
  canvas.width = cols * cell + (cols - 1) * gap;
  canvas.height = rows * cell + (rows - 1) * gap;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#f4f6fa";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const scale = maxAbs(kernels.flat(3));
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const x0 = c * (cell + gap);
      const y0 = r * (cell + gap);
      kernels[r][c].forEach((line, i) =>
        line.forEach((value, j) => {
          const [red, green, blue] = diverging(value, scale);
          ctx.fillStyle = `rgb(${red},${green},${blue})`;
          ctx.fillRect(x0 + j * px, y0 + i * px, Math.ceil(px), Math.ceil(px));
        }),
      );
    }
  }
}

/** A histogram of `values` (a flat array) with `bins` bars, its range written underneath. */
export function drawHistogram(canvas, values, color, bins = 40) {
  const { ctx, width, height } = setupHiDpi(canvas);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  if (!values || values.length === 0) {
    ctx.fillText("no gradient yet (no step taken)", 4, height / 2);
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
