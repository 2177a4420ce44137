// The autograd graph behind a loss (POST /loss with graph: true) as an SVG drawing: the tutorial's
// `loss.grad_fn.next_functions` walk, whole, one row per distance from the loss.

const SVG = "http://www.w3.org/2000/svg";
const ROW = 50;
const BOX_H = 30;
const GAP = 14;
const CHAR_W = 6.6;

function svg(name, attributes = {}) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/** Each node's row: its longest distance from the root (the graph is acyclic). */
function levels(graph) {
  const byId = new Map(graph.nodes.map((node) => [node.id, node]));
  const level = new Map([[graph.root, 0]]);
  const order = [graph.root];
  // Relax edges in rounds until nothing moves: at most one round per node, and LeNet's has ~30.
  for (let changed = true, rounds = 0; changed && rounds <= graph.nodes.length; rounds++) {
    changed = false;
    for (const node of graph.nodes) {
      if (!level.has(node.id)) continue;
      for (const next of node.next) {
        const candidate = level.get(node.id) + 1;
        if (!level.has(next) || level.get(next) < candidate) {
          if (!level.has(next)) order.push(next);
          level.set(next, candidate);
          changed = true;
        }
      }
    }
  }
  return { byId, level, order };
}

/** The path from the loss that goes deepest: MseLossBackward0 -> AddmmBackward0 -> ReluBackward0 ... */
export function longestChain(graph) {
  const byId = new Map(graph.nodes.map((node) => [node.id, node]));
  const height = new Map();
  const heightOf = (id) => {
    if (height.has(id)) return height.get(id);
    const node = byId.get(id);
    const h = 1 + Math.max(0, ...node.next.map(heightOf));
    height.set(id, h);
    return h;
  };
  const chain = [];
  let node = byId.get(graph.root);
  while (node) {
    chain.push(node);
    const next = [...node.next].sort((a, b) => heightOf(b) - heightOf(a))[0];
    node = next === undefined ? null : byId.get(next);
  }
  return chain;
}

const label = (node) => (node.param ? `${node.name} (${node.param})` : node.name);

/** An <svg> of `graph`, the nodes of `chain` in the first column and highlighted. */
export function drawGraph(graph, chain) {
  const { byId, level } = levels(graph);
  const onChain = new Set(chain.map((node) => node.id));
  const rows = [];
  for (const node of graph.nodes) {
    const row = level.get(node.id);
    if (row === undefined) continue;
    (rows[row] ??= []).push(node);
  }
  const place = new Map();
  let width = 0;
  rows.forEach((nodes, row) => {
    nodes.sort((a, b) => Number(onChain.has(b.id)) - Number(onChain.has(a.id)) || a.id - b.id);
    let x = 8;
    for (const node of nodes) {
      const w = label(node).length * CHAR_W + 16;
      place.set(node.id, { x, y: 8 + row * ROW, w });
      x += w + GAP;
    }
    width = Math.max(width, x);
  });
  const height = rows.length * ROW + 8;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: "graph",
    role: "img",
    "data-nodes": graph.nodes.length,
  });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L8,4 L0,8 z", fill: "#9aa3b2" }));
  defs.append(marker);
  root.append(defs);
  for (const node of graph.nodes) {
    const from = place.get(node.id);
    if (!from) continue;
    for (const next of node.next) {
      const to = place.get(next);
      if (!to) continue;
      const both = onChain.has(node.id) && onChain.has(next) && chain.indexOf(byId.get(next)) === chain.indexOf(node) + 1;
      root.append(
        svg("line", {
          x1: from.x + from.w / 2,
          y1: from.y + BOX_H,
          x2: to.x + to.w / 2,
          y2: to.y,
          stroke: both ? "#3563e9" : "#c4cad6",
          "stroke-width": both ? 2 : 1,
          "marker-end": "url(#arrow)",
        }),
      );
    }
  }
  for (const node of graph.nodes) {
    const at = place.get(node.id);
    if (!at) continue;
    const group = svg("g", { "data-name": node.name, "data-id": node.id });
    const chained = onChain.has(node.id);
    group.append(
      svg("rect", {
        x: at.x,
        y: at.y,
        width: at.w,
        height: BOX_H,
        rx: 6,
        fill: node.param ? "#fff7e6" : chained ? "#e8eeff" : "#fff",
        stroke: chained ? "#3563e9" : "#c4cad6",
      }),
    );
    const text = svg("text", {
      x: at.x + at.w / 2,
      y: at.y + BOX_H / 2 + 4,
      "text-anchor": "middle",
      "font-size": 11,
      "font-family": "ui-monospace, Menlo, Consolas, monospace",
      fill: "#1d2330",
    });
    text.textContent = label(node);
    group.append(text);
    root.append(group);
  }
  return root;
}
