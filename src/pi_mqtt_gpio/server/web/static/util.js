// Small helpers shared by the dashboard's modules (no dependencies).

export const $ = (sel) => document.querySelector(sel);

/** Build an element: el("button", {class: "x", onclick: fn}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

/** MQTT topic filter matching ('+' one level, '#' the rest, '$' topics not by wildcards). */
export function topicMatches(filter, topic) {
  const f = filter.split("/");
  const t = topic.split("/");
  if ((f[0] === "+" || f[0] === "#") && topic.startsWith("$")) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export function fmtTime(ts) {
  const d = ts ? new Date(ts) : null;
  return d && !Number.isNaN(d.getTime()) ? d.toLocaleTimeString() : "";
}

export function toast(text, kind = "") {
  const box = document.querySelector("#toasts");
  const t = el("div", { class: `toast ${kind}`, role: kind === "bad" ? "alert" : "status" }, text);
  box.append(t);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(() => t.remove(), kind === "bad" ? 8000 : 4000);
}
