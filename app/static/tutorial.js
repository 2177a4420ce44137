// The Neural Networks tutorial, walked: one card per cell, each with a button that runs the cell
// against the live service (the tutorial's loop split into its cells: GET /model, GET /params,
// POST /predict, /zero-grad, /backward, /loss, /step, /train-step) and prints what PyTorch prints.

import { createApi, describeOptimizer } from "./api.js";
import { drawGraph, longestChain } from "./graph.js";
import { setText, setupLanguage, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const LR = 0.01; // the tutorial's learning rate
const TARGET = Array.from({ length: 10 }, (_, i) => i + 1); // torch.arange(1, 11)

setupLanguage($("language"));
const api = createApi(
  () => $("token").value,
  (hasToken) => t(hasToken ? "error.token.wrong" : "error.token.missing"),
);

const shown = { version: -1 };
function noteVersion(answer) {
  if (!answer || typeof answer.version !== "number" || answer.version < shown.version) return;
  shown.version = answer.version;
  $("model-version").textContent = String(answer.version);
  $("model-step").textContent = String(answer.step);
}

// ---- numbers as PyTorch prints them -------------------------------------------------------

/** A standard normal sample (Box-Muller), as torch.randn draws them. */
function randn() {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

/** `tensor([...])` with four decimals, all numbers padded to one width, as torch prints. */
export function formatTensor(values, gradFn) {
  const nested = Array.isArray(values[0]);
  const flat = nested ? values.flat() : values;
  const texts = flat.map((v) => v.toFixed(4));
  const width = Math.max(...texts.map((s) => s.length));
  const row = (numbers) => `[${numbers.map((v) => v.toFixed(4).padStart(width)).join(", ")}]`;
  const body = nested ? `[${values.map(row).join(",\n         ")}]` : row(values);
  return `tensor(${body}${gradFn ? `, grad_fn=<${gradFn}>` : ""})`;
}

function scalar(value, gradFn) {
  return `tensor(${value.toFixed(4)}, grad_fn=<${gradFn}>)`;
}

// ---- the state the cells share, as the tutorial's variables -------------------------------

const state = { input: null, gradOutputs: null, graph: null };

/** `input = torch.randn(1, 1, 32, 32)`, drawn once and kept, as the tutorial keeps it. */
function input() {
  if (!state.input) {
    state.input = [[Array.from({ length: 32 }, () => Array.from({ length: 32 }, randn))]];
  }
  return state.input;
}

function gradOutputs() {
  if (!state.gradOutputs) state.gradOutputs = Array.from({ length: 10 }, randn);
  return state.gradOutputs;
}

async function biasGrad() {
  const report = await api.get("/params?name=conv1.bias&values=true&grads=true");
  noteVersion(report);
  return report.parameters[0];
}

const lossBody = (extra) => ({ inputs: input(), targets: TARGET, loss: "mse", ...extra });

function table(headers, rows) {
  const element = document.createElement("table");
  element.className = "numbers";
  const head = document.createElement("tr");
  for (const key of headers) {
    const th = document.createElement("th");
    th.scope = "col";
    setText(th, key);
    head.append(th);
  }
  element.append(head);
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    element.append(tr);
  }
  return element;
}

// ---- the cells ----------------------------------------------------------------------------

const STEPS = [
  {
    id: "net",
    code: "net = Net()\nprint(net)",
    async run(out) {
      const model = await api.get("/model");
      noteVersion(model);
      out.textContent = model.repr;
    },
  },
  {
    id: "params",
    code: "params = list(net.parameters())\nprint(len(params))\nprint(params[0].size())  # conv1's .weight",
    async run(out) {
      const report = await api.get("/params");
      noteVersion(report);
      out.textContent = `${report.parameters.length}\ntorch.Size([${report.parameters[0].shape.join(", ")}])`;
    },
  },
  {
    id: "forward",
    code: "input = torch.randn(1, 1, 32, 32)\nout = net(input)\nprint(out)",
    async run(out) {
      state.input = null; // a new random input each time, as re-running the cell draws one
      const answer = await api.post("/predict", { inputs: input() });
      noteVersion(answer);
      out.dataset.sent = JSON.stringify(input());
      out.textContent = formatTensor(answer.outputs, "AddmmBackward0");
    },
  },
  {
    id: "backward",
    code: "net.zero_grad()\nout.backward(torch.randn(1, 10))\nprint(net.conv1.bias.grad)",
    async run(out) {
      state.gradOutputs = null;
      noteVersion(await api.post("/zero-grad"));
      const answer = await api.post("/backward", { inputs: input(), grad_outputs: gradOutputs() });
      noteVersion(answer);
      const bias = await biasGrad();
      out.dataset.sent = JSON.stringify({ inputs: input(), grad_outputs: gradOutputs() });
      out.textContent = `${formatTensor(bias.grad)}\n# grad_norm ${answer.grad_norm.toPrecision(6)}`;
    },
  },
  {
    id: "accumulate",
    code:
      "net.zero_grad()\nout = net(input); out.backward(g)   # first\nprint(net.conv1.bias.grad)\n" +
      "out = net(input); out.backward(g)   # again, no zero_grad\nprint(net.conv1.bias.grad)",
    async run(out, extra) {
      const body = { inputs: input(), grad_outputs: gradOutputs() };
      await api.post("/backward", { ...body, zero_grad: true });
      const first = (await biasGrad()).grad;
      await api.post("/backward", { ...body, zero_grad: false });
      const second = (await biasGrad()).grad;
      out.textContent = `${formatTensor(first)}\n${formatTensor(second)}`;
      extra.replaceChildren(
        table(
          ["tut.col.first", "tut.col.second", "tut.col.sum"],
          first.map((g, i) => [g.toFixed(6), second[i].toFixed(6), (g + g).toFixed(6)]),
        ),
      );
    },
  },
  {
    id: "loss",
    code:
      "output = net(input)\ntarget = torch.arange(1, 11, dtype=torch.float)  # a dummy target\n" +
      "target = target.view(1, -1)  # make it the same shape as output\ncriterion = nn.MSELoss()\n\n" +
      "loss = criterion(output, target)\nprint(loss)",
    async run(out) {
      const answer = await api.post("/loss", lossBody({ graph: true }));
      noteVersion(answer);
      state.graph = answer.graph;
      out.dataset.sent = JSON.stringify(lossBody({ graph: true }));
      out.textContent = scalar(answer.loss, answer.graph.nodes[answer.graph.root].name);
    },
  },
  {
    id: "graph",
    code:
      "print(loss.grad_fn)  # MSELoss\nprint(loss.grad_fn.next_functions[0][0])  # Linear\n" +
      "print(loss.grad_fn.next_functions[0][0].next_functions[0][0])  # ReLU",
    async run(out, extra) {
      if (!state.graph) state.graph = (await api.post("/loss", lossBody({ graph: true }))).graph;
      const chain = longestChain(state.graph);
      out.textContent = `${chain.map((node) => node.name).join(" -> ")}`;
      extra.replaceChildren(drawGraph(state.graph, chain));
    },
  },
  {
    id: "grad",
    code:
      "net.zero_grad()     # zeroes the gradient buffers of all parameters\n\n" +
      "print('conv1.bias.grad before backward')\nprint(net.conv1.bias.grad)\n\nloss.backward()\n\n" +
      "print('conv1.bias.grad after backward')\nprint(net.conv1.bias.grad)",
    async run(out) {
      noteVersion(await api.post("/zero-grad"));
      const before = await biasGrad();
      await api.post("/loss", lossBody({ backward: true }));
      const after = await biasGrad();
      out.textContent =
        `conv1.bias.grad before backward\n${before.grad === null ? "None" : formatTensor(before.grad)}\n` +
        `conv1.bias.grad after backward\n${formatTensor(after.grad)}`;
    },
  },
  {
    id: "sgd",
    code: "learning_rate = 0.01\nfor f in net.parameters():\n    f.data.sub_(f.grad.data * learning_rate)",
    async run(out, extra) {
      // The tutorial's rule is plain SGD: set it, so that POST /step applies exactly this rule.
      const optimizer = await api.put("/optimizer", { name: "sgd", lr: LR });
      await api.post("/loss", lossBody({ backward: true }));
      const before = await biasGrad();
      const answer = await api.post("/step", { lr: LR });
      noteVersion(answer);
      const after = (await biasGrad()).values;
      let largest = 0;
      const rows = before.values.map((b, i) => {
        const expected = b - LR * before.grad[i];
        const difference = Math.abs(after[i] - expected);
        largest = Math.max(largest, difference);
        return [
          b.toFixed(8),
          before.grad[i].toPrecision(7),
          expected.toFixed(8),
          after[i].toFixed(8),
          difference <= 1e-6 ? "✓" : "✗",
        ];
      });
      setText(out, "tut.sgd.out", { optimizer: describeOptimizer(optimizer), step: answer.step, version: answer.version });
      const verdict = document.createElement("p");
      verdict.className = "note";
      setText(verdict, "tut.sgd.verdict", { largest: largest.toExponential(1) });
      verdict.dataset.holds = String(largest <= 1e-6);
      extra.replaceChildren(
        table(
          ["step.col.before", "step.col.grad", "tut.col.rule", "step.col.after", "tut.col.ok"],
          rows,
        ),
        verdict,
      );
    },
  },
  {
    id: "optim",
    code:
      "import torch.optim as optim\n\n# create your optimizer\noptimizer = optim.SGD(net.parameters(), lr=0.01)\n\n" +
      "# in your training loop:\noptimizer.zero_grad()   # zero the gradient buffers\noutput = net(input)\n" +
      "loss = criterion(output, target)\nloss.backward()\noptimizer.step()    # Does the update",
    async run(out, extra) {
      await api.put("/optimizer", { name: "sgd", lr: LR });
      const answer = await api.post("/train-step", lossBody({}));
      noteVersion(answer);
      const afterwards = await api.post("/loss", lossBody({}));
      setText(out, "tut.optim.out", {
        before: answer.loss.toFixed(4),
        after: afterwards.loss.toFixed(4),
        optimizer: describeOptimizer(answer.optimizer),
        step: answer.step,
        version: answer.version,
      });
      out.dataset.before = String(answer.loss);
      out.dataset.after = String(afterwards.loss);
      const catalogue = await api.get("/optimizers");
      extra.replaceChildren(
        table(
          ["tut.col.optimizer", "tut.col.defaults"],
          catalogue.optimizers.map((o) => [
            o.name,
            Object.entries(o.defaults)
              .filter(([key]) => key !== "name")
              .map(([key, value]) => `${key}=${JSON.stringify(value)}`)
              .join(", "),
          ]),
        ),
      );
    },
  },
  {
    id: "batch",
    code: "image = torch.randn(1, 32, 32)     # one sample: channels x height x width\nout = net(image.unsqueeze(0))      # a fake batch dimension: 1 x 1 x 32 x 32",
    async run(out) {
      const image = input()[0][0]; // 32 x 32, no batch dimension
      const [alone, batched] = await Promise.all([
        api.post("/predict", { inputs: image }),
        api.post("/predict", { inputs: [[image]] }),
      ]);
      noteVersion(alone);
      const same = alone.outputs[0].every((v, i) => v === batched.outputs[0][i]);
      out.textContent =
        `# [32, 32]        -> ${formatTensor(alone.outputs)}\n` +
        `# [1, 1, 32, 32]  -> ${formatTensor(batched.outputs)}\n# ${same ? "==" : "!="}`;
      out.dataset.same = String(same);
    },
  },
];

// ---- the page -----------------------------------------------------------------------------

function build() {
  const root = $("steps");
  STEPS.forEach((step, index) => {
    const card = document.createElement("section");
    card.className = "card tut-step";
    card.id = `step-${step.id}`;
    const title = document.createElement("h2");
    title.id = `step-${step.id}-title`;
    card.setAttribute("aria-labelledby", title.id);
    const number = document.createElement("span");
    number.className = "step-number";
    number.textContent = `${index + 1}`;
    const name = document.createElement("span");
    setText(name, `tut.${step.id}.title`);
    title.append(number, " ", name);
    const text = document.createElement("p");
    setText(text, `tut.${step.id}.text`);
    const code = document.createElement("pre");
    code.className = "code";
    code.textContent = step.code;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "primary run";
    button.id = `run-${step.id}`;
    setText(button, "tut.run");
    const out = document.createElement("pre");
    out.className = "output";
    out.id = `out-${step.id}`;
    out.setAttribute("aria-live", "polite");
    const extra = document.createElement("div");
    extra.className = "extra scroll-x";
    extra.id = `extra-${step.id}`;
    button.addEventListener("click", async () => {
      button.disabled = true;
      $("error").hidden = true;
      try {
        await step.run(out, extra);
        card.dataset.done = "true";
      } catch (error) {
        showError(error);
        setText(out, "tut.failed", { message: error.message });
      } finally {
        button.disabled = false;
      }
    });
    card.append(title, text, code, button, out, extra);
    root.append(card);
  });
}

function showError(error) {
  $("error-text").textContent = error?.message ?? String(error);
  $("error").hidden = false;
}

$("error-dismiss").addEventListener("click", () => {
  $("error").hidden = true;
});
build();
api
  .get("/model")
  .then(noteVersion)
  .catch(showError)
  .finally(() => {
    document.body.dataset.ready = "true";
  });
