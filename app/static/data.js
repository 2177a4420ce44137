// scikit-learn's digits (static/digits.json, made by scripts/make_digits_json.py) for training.

/** One encoded 8x8 image (64 base-17 characters, values 0..16) as 8 rows of floats in [0, 1]. */
export function decodeImage(text, maxValue) {
  const rows = [];
  for (let y = 0; y < 8; y++) {
    const row = [];
    for (let x = 0; x < 8; x++) row.push(parseInt(text[y * 8 + x], 17) / maxValue);
    rows.push(row);
  }
  return rows;
}

function decodeSplit(split, maxValue) {
  return {
    images: split.images.map((text) => decodeImage(text, maxValue)),
    labels: Array.from(split.labels, Number),
  };
}

/** Load the data set: `{train: {images, labels}, heldOut: {images, labels}}`. */
export async function loadDigits(url = "/static/digits.json") {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${response.statusText}`);
  const data = await response.json();
  return {
    train: decodeSplit(data.train, data.max_value),
    heldOut: decodeSplit(data.held_out, data.max_value),
    source: data.source,
  };
}

/** Batches drawn without replacement, reshuffled each epoch (a seeded shuffle, reproducible). */
export class Sampler {
  constructor(split, seed = 1) {
    this.split = split;
    this.order = [];
    this.state = seed >>> 0 || 1;
    this.epoch = 0;
    this.drawn = 0; // examples handed out so far
  }

  /** Epochs done so far, as a fraction: examples drawn over the size of the split. */
  epochs() {
    return this.drawn / this.split.labels.length;
  }

  #random() {
    // xorshift32: enough for shuffling, and the same batches on every run.
    this.state ^= this.state << 13;
    this.state ^= this.state >>> 17;
    this.state ^= this.state << 5;
    return (this.state >>> 0) / 4294967296;
  }

  #reshuffle() {
    this.order = this.split.labels.map((_, i) => i);
    for (let i = this.order.length - 1; i > 0; i--) {
      const j = Math.floor(this.#random() * (i + 1));
      [this.order[i], this.order[j]] = [this.order[j], this.order[i]];
    }
    this.epoch++;
  }

  /** The next `size` examples: `{inputs: [N][8][8], targets: [N]}`. */
  next(size) {
    const inputs = [];
    const targets = [];
    while (inputs.length < size) {
      if (this.order.length === 0) this.#reshuffle();
      const i = this.order.pop();
      inputs.push(this.split.images[i]);
      targets.push(this.split.labels[i]);
      this.drawn++;
    }
    return { inputs, targets };
  }
}

/**
 * Resize an image (rows of floats) to `side` x `side` as the server does: bilinear, as
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False).
 */
export function resizeBilinear(rows, side = 32) {
  const h = rows.length;
  const w = rows[0].length;
  const source = (i, inSize) => {
    const s = Math.max(0, ((i + 0.5) * inSize) / side - 0.5);
    const i0 = Math.min(Math.floor(s), inSize - 1);
    return [i0, Math.min(i0 + 1, inSize - 1), s - i0];
  };
  const out = [];
  for (let y = 0; y < side; y++) {
    const [y0, y1, fy] = source(y, h);
    const row = new Array(side);
    for (let x = 0; x < side; x++) {
      const [x0, x1, fx] = source(x, w);
      const top = rows[y0][x0] * (1 - fx) + rows[y0][x1] * fx;
      const bottom = rows[y1][x0] * (1 - fx) + rows[y1][x1] * fx;
      row[x] = top * (1 - fy) + bottom * fy;
    }
    out.push(row);
  }
  return out;
}
