// The page's languages: one strings file per language in i18n/, the same keys in each.
//
// Static text carries `data-i18n="key"` (and data-i18n-aria, -title, -placeholder for those
// attributes); text the page writes later goes through `setText`, which records its key and
// arguments on the element so a language switch can redraw it. `code` in backticks becomes a
// <code> element; numbers and code are written as they are in every language.

import en from "./i18n/en.js";
import zhTW from "./i18n/zh-TW.js";

export const LANGUAGES = { en, "zh-TW": zhTW };
const STORAGE_KEY = "lenet-serve.language";
const listeners = [];
let current = "en";

/** The language to start in: the one chosen before, else the browser's (zh* → zh-TW), else en. */
export function detectLanguage() {
  let stored = null;
  try {
    stored = localStorage.getItem(STORAGE_KEY);
  } catch {
    stored = null; // storage can be off (privacy settings); the browser's language decides then
  }
  if (stored && stored in LANGUAGES) return stored;
  for (const tag of navigator.languages ?? [navigator.language ?? "en"]) {
    const lower = String(tag).toLowerCase();
    if (lower.startsWith("zh")) return "zh-TW";
    if (lower.startsWith("en")) return "en";
  }
  return "en";
}

export function language() {
  return current;
}

/** The string for `key` in the current language, `{name}` replaced by `params.name`. */
export function t(key, params = {}) {
  const text = LANGUAGES[current][key] ?? LANGUAGES.en[key];
  if (text === undefined) {
    console.error(`i18n: no string for ${key}`);
    return key;
  }
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in params ? String(params[name]) : match));
}

/** Fill `element` with `text`, turning `code` spans into <code> elements (never HTML). */
export function renderRich(element, text) {
  const parts = text.split("`");
  if (parts.length === 1) {
    element.textContent = text;
    return;
  }
  element.replaceChildren(
    ...parts.map((part, i) => {
      if (i % 2 === 0) return document.createTextNode(part);
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    }),
  );
}

/** Show `t(key, params)` in `element`, and keep showing it in whichever language is chosen. */
export function setText(element, key, params) {
  element.dataset.i18n = key;
  if (params) element.dataset.i18nArgs = JSON.stringify(params);
  else delete element.dataset.i18nArgs;
  renderRich(element, t(key, params));
}

/** Translate every marked element under `root`. */
export function translate(root = document) {
  for (const element of root.querySelectorAll("[data-i18n]")) {
    const args = element.dataset.i18nArgs ? JSON.parse(element.dataset.i18nArgs) : undefined;
    renderRich(element, t(element.dataset.i18n, args));
  }
  for (const [attribute, data] of [
    ["aria-label", "i18nAria"],
    ["title", "i18nTitle"],
    ["placeholder", "i18nPlaceholder"],
  ]) {
    const selector = `[data-${data.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}]`;
    for (const element of root.querySelectorAll(selector)) {
      element.setAttribute(attribute, t(element.dataset[data]));
    }
  }
}

/** Switch to `lang`, remember it, translate the page and tell the listeners. */
export function setLanguage(lang, remember = true) {
  current = lang in LANGUAGES ? lang : "en";
  document.documentElement.lang = current;
  if (remember) {
    try {
      localStorage.setItem(STORAGE_KEY, current);
    } catch {
      // not remembered: the switch still works for this visit
    }
  }
  translate();
  for (const listener of listeners) listener(current);
}

/** Call `listener(lang)` after every language switch (to redraw canvases, say). */
export function onLanguageChange(listener) {
  listeners.push(listener);
}

/** Wire a <select> to the languages and start in the detected one. */
export function setupLanguage(select) {
  setLanguage(detectLanguage(), false);
  select.value = current;
  select.addEventListener("change", () => setLanguage(select.value));
}
