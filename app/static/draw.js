// The drawing pad: pointer strokes (mouse, pen, touch) and their 32x32 image for the model.

const SIDE = 32;
// The digit is fitted into this box of the 32x32 image, centred: scikit-learn's digits (8x8,
// upscaled) fill their frame, so a small drawing in a corner should look the same to the model.
const BOX = 30;
// Stroke width in the 32x32 image, whatever the size of the drawing: the 8x8 digits' strokes
// are one or two of their pixels wide, i.e. about 4 to 8 pixels once upscaled to 32x32.
const STROKE_32 = 5;

/** A canvas to draw on; `onChange` is called as strokes grow and when the pad is cleared. */
export class DrawPad {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onChange = onChange;
    this.strokes = []; // each stroke: [[x, y], ...] in canvas pixels
    this.active = null;
    this.image = null; // a loaded 32x32 image (a held-out digit), instead of strokes
    this.lineWidth = canvas.width / 14;
    this.#wipe();
    canvas.addEventListener("pointerdown", (event) => this.#down(event));
    canvas.addEventListener("pointermove", (event) => this.#move(event));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(type, (event) => this.#up(event));
    }
  }

  /** True when nothing is drawn. */
  isBlank() {
    return this.strokes.length === 0 && this.image === null;
  }

  /** Show `rows` (32x32 floats in [0, 1]) on the pad, replacing the drawing. */
  loadImage(rows) {
    this.#wipe();
    this.image = rows.map((row) => row.slice());
    const small = document.createElement("canvas");
    paintGray(small, this.image);
    this.ctx.imageSmoothingEnabled = false;
    this.ctx.drawImage(small, 0, 0, this.canvas.width, this.canvas.height);
    this.onChange?.();
  }

  /** Erase everything. */
  clear() {
    this.#wipe();
    this.onChange?.();
  }

  #wipe() {
    this.strokes = [];
    this.image = null;
    this.active = null;
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  }

  #point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) / rect.width) * this.canvas.width,
      ((event.clientY - rect.top) / rect.height) * this.canvas.height,
    ];
  }

  #down(event) {
    if (event.button !== undefined && event.button > 0) return;
    event.preventDefault();
    if (this.image) this.#wipe(); // drawing on a loaded digit starts a new drawing
    this.canvas.setPointerCapture?.(event.pointerId);
    this.active = event.pointerId;
    this.strokes.push([this.#point(event)]);
    this.#paintLast();
    this.onChange?.();
  }

  #move(event) {
    if (this.active !== event.pointerId) return;
    event.preventDefault();
    // getCoalescedEvents keeps fast strokes smooth where the browser batches pointer moves.
    const events = event.getCoalescedEvents?.() ?? [event];
    const stroke = this.strokes[this.strokes.length - 1];
    for (const each of events.length ? events : [event]) stroke.push(this.#point(each));
    this.#paintLast();
    this.onChange?.();
  }

  #up(event) {
    if (this.active !== event.pointerId) return;
    this.active = null;
    this.onChange?.();
  }

  #paintLast() {
    const stroke = this.strokes[this.strokes.length - 1];
    paintStroke(this.ctx, stroke, this.lineWidth, (p) => p);
  }

  /** The drawing as the model wants it: 32 rows of 32 floats in [0, 1], white on black. */
  toImage() {
    if (this.image) return this.image.map((row) => row.slice());
    const canvas = document.createElement("canvas");
    canvas.width = SIDE;
    canvas.height = SIDE;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, SIDE, SIDE);
    if (!this.isBlank()) {
      // Re-render the strokes as vectors into the fitted box, so the stroke width in the
      // 32x32 image does not depend on how large the digit was drawn.
      const points = this.strokes.flat();
      const xs = points.map((p) => p[0]);
      const ys = points.map((p) => p[1]);
      const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      const extent = Math.max(maxX - minX, maxY - minY, this.canvas.width / 10);
      const scale = (BOX - STROKE_32) / extent;
      const cx = (minX + maxX) / 2;
      const cy = (minY + maxY) / 2;
      const map = ([x, y]) => [SIDE / 2 + (x - cx) * scale, SIDE / 2 + (y - cy) * scale];
      // A slight blur: the upscaled 8x8 digits the model learns from have soft edges.
      ctx.filter = "blur(1px)";
      for (const stroke of this.strokes) paintStroke(ctx, stroke, STROKE_32, map);
      ctx.filter = "none";
    }
    const { data } = ctx.getImageData(0, 0, SIDE, SIDE);
    const rows = [];
    for (let y = 0; y < SIDE; y++) {
      const row = new Array(SIDE);
      for (let x = 0; x < SIDE; x++) row[x] = Math.round((data[(y * SIDE + x) * 4] / 255) * 1000) / 1000;
      rows.push(row);
    }
    return rows;
  }
}

function paintStroke(ctx, stroke, width, map) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  const points = stroke.map(map);
  if (points.length === 1) {
    ctx.beginPath();
    ctx.arc(points[0][0], points[0][1], width / 2, 0, Math.PI * 2);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(points[0][0], points[0][1]);
  for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
  ctx.stroke();
}

/** Paint a rows x cols image of values in [0, 1] onto a canvas, gray levels, scaled up. */
export function paintGray(canvas, rows) {
  const ctx = canvas.getContext("2d");
  const height = rows.length;
  const width = rows[0].length;
  const image = ctx.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = Math.max(0, Math.min(255, Math.round(rows[y][x] * 255)));
      image.data.set([v, v, v, 255], (y * width + x) * 4);
    }
  }
  canvas.width = width;
  canvas.height = height;
  ctx.putImageData(image, 0, 0);
}
