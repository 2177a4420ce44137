// The HTTP API of lenet-serve, as the page uses it: JSON in, JSON out, errors as ApiError.

/** An answer that is not 2xx (or no answer at all), with the server's `detail` made readable. */
export class ApiError extends Error {
  constructor(method, path, status, statusText, detail) {
    const what = status === 0 ? "no answer from the server" : `${status} ${statusText}`;
    super(`${method} ${path}: ${what}${detail ? ` — ${detail}` : ""}`);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

/** FastAPI's `detail`: a string, or a list of validation errors `{loc, msg}`; as one line. */
export function formatDetail(detail) {
  if (detail === undefined || detail === null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        if (item && typeof item === "object" && "msg" in item) {
          const where = Array.isArray(item.loc) ? item.loc.join(".") : "";
          return where ? `${where}: ${item.msg}` : String(item.msg);
        }
        return JSON.stringify(item);
      })
      .join("; ");
  }
  return JSON.stringify(detail);
}

/**
 * A client for the server that served this page; `getToken()` gives the bearer token or "";
 * `tokenHint(hasToken)` says, in the page's language, what to do about a 401.
 */
export function createApi(getToken, tokenHint) {
  async function request(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = getToken().trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiError(method, path, 0, "", error.message);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      let detail = data && "detail" in data ? formatDetail(data.detail) : text.slice(0, 300);
      if (response.status === 401) {
        detail += ` (${tokenHint(Boolean(getToken().trim()))})`;
      }
      throw new ApiError(method, path, response.status, response.statusText, detail);
    }
    return data;
  }

  return {
    get: (path) => request("GET", path),
    post: (path, body) => request("POST", path, body),
    put: (path, body) => request("PUT", path, body),
  };
}

/**
 * Run `task` at most once per `interval` ms and never twice at once; a call that arrives while it
 * runs or too soon is not lost: one trailing run happens afterwards, with the latest state.
 */
export function throttle(task, interval) {
  let running = false;
  let pending = false;
  let last = 0;
  let timer = null;

  async function run() {
    timer = null;
    running = true;
    pending = false;
    last = performance.now();
    try {
      await task();
    } finally {
      running = false;
      if (pending) schedule();
    }
  }

  function schedule() {
    if (running) {
      pending = true;
      return;
    }
    if (timer !== null) return;
    const wait = Math.max(0, last + interval - performance.now());
    timer = setTimeout(run, wait);
  }

  return schedule;
}

/** An optimizer configuration as one line: `adam, lr 0.001`, `sgd, lr 0.05, momentum 0.9`. */
export function describeOptimizer(config) {
  if (!config) return "–";
  const extras = Object.entries(config)
    .filter(([key, value]) => ["momentum", "nesterov", "weight_decay"].includes(key) && value !== 0 && value !== false)
    .map(([key, value]) => `${key} ${value}`);
  return [`${config.name}, lr ${config.lr}`, ...extras].join(", ");
}
