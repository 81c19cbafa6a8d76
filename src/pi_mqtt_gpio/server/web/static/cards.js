// One card per device, chosen by the catalogue's type and capabilities. A card shows the
// retained state and the latest events, and its controls call the device's methods.
import { el, fmtTime } from "./util.js";

const has = (dev, cap) => (dev.capabilities || []).includes(cap);
const hasMethod = (dev, m) => (dev.methods || []).includes(m);
const param = (dev, method, name) => {
  const m = (dev.method_params || []).find((x) => x.name === method);
  return m && m.params.find((p) => p.name === name);
};

function kindOf(dev) {
  if (dev.type === "Cover") return "cover";
  if (has(dev, "sensor") && hasMethod(dev, "history")) return "sensor"; // polled, with kept readings
  if (dev.kind === "input") return "input";
  if (has(dev, "rgb")) return "rgb";
  if (has(dev, "dimmable")) return "dimmer";
  if (has(dev, "motor")) return "motor";
  if (has(dev, "servo")) return "servo";
  if (has(dev, "number") || dev.range) return "number";
  if (has(dev, "light") || has(dev, "switch")) return "switch";
  return "generic";
}

/** A range input that the twin moves, except while the user holds it. */
function slider({ min, max, step, label, onCommit }) {
  const input = el("input", { type: "range", min, max, step, "aria-label": label, class: "w" });
  input.value = String((Number(min) + Number(max)) / 2); // after min and max are known
  let busy = false;
  input.addEventListener("pointerdown", () => { busy = true; });
  input.addEventListener("input", () => { busy = true; });
  input.addEventListener("change", () => {
    // Sent; from now on the slider follows the twin again (a cover's slider moves live
    // while it travels to the target).
    busy = false;
    onCommit(Number(input.value));
  });
  return {
    input,
    set(v) { if (!busy && v !== null && v !== undefined && Number.isFinite(Number(v))) input.value = String(v); },
  };
}

export function makeCard(dev, ctx) {
  const kind = kindOf(dev);
  const value = el("div", { class: "value", "data-role": "value" }, "…");
  const controls = el("div", { class: "controls" });
  const sims = el("div", { class: "controls sim" });
  const events = el("ul", { class: "events", hidden: true });
  const notes = el("div", { class: "lock" });
  // Why the controls cannot work (before a click), and what went wrong with the last
  // command sent from here (a refusal, or no answer at all).
  const why = el("p", { class: "why", "data-role": "why", hidden: true });
  const problem = el("p", { class: "error", "data-role": "error", role: "alert", hidden: true });
  const root = el("article", { class: "card", id: `card-${dev.name}`, "data-device": dev.name, "data-type": dev.type, "data-kind": kind },
    el("h3", {}, dev.name, el("span", { class: "type" }, dev.type)),
    dev.description ? el("p", { class: "desc" }, dev.description) : null,
    value, notes, why, controls, sims, problem, events);
  const call = (method, kwargs, opts) => ctx.command(dev.name, method, kwargs, opts);
  const row = (...children) => { const r = el("div", { class: "row" }, ...children); controls.append(r); return r; };
  const btn = (label, onclick, cls = "w") => el("button", { type: "button", class: cls, onclick }, label);
  let state = {};
  let render = () => { value.textContent = JSON.stringify(stripTs(state)); };
  const extra = { history: null };

  if (kind === "switch") {
    const toggle = el("button", { type: "button", class: "w toggle", "aria-pressed": "false",
      onclick: () => call(state.is_active ? "off" : "on") }, "Off");
    row(toggle,
      hasMethod(dev, "blink") ? btn("Blink ×3", () => call("blink", { on_time: 0.3, off_time: 0.3, n: 3 })) : null,
      hasMethod(dev, "beep") ? btn("Beep", () => call("beep", { on_time: 0.2, off_time: 0.2, n: 1 })) : null);
    render = () => {
      const on = !!state.is_active;
      value.textContent = state.blinking ? "blinking" : on ? "on" : "off";
      toggle.textContent = on ? "On" : "Off";
      toggle.setAttribute("aria-pressed", String(on));
    };
  } else if (kind === "dimmer") {
    const toggle = el("button", { type: "button", class: "w toggle", "aria-pressed": "false",
      onclick: () => call(state.is_active ? "off" : "on") }, "Off");
    const s = slider({ min: 0, max: 100, step: 1, label: `${dev.name} brightness`, onCommit: (v) => call("value", { value: v / 100 }) });
    row(toggle);
    row(s.input);
    render = () => {
      const pct = Math.round((Number(state.value) || 0) * 100);
      value.textContent = state.blinking ? "pulsing" : `${pct} %`;
      toggle.textContent = state.is_active ? "On" : "Off";
      toggle.setAttribute("aria-pressed", String(!!state.is_active));
      s.set(pct);
    };
  } else if (kind === "rgb") {
    const picker = el("input", { type: "color", class: "w", "aria-label": `${dev.name} colour`, value: "#ffffff" });
    picker.addEventListener("change", () => call("color", { color: picker.value }));
    const off = btn("Off", () => call("off"));
    row(picker, off);
    render = () => {
      const hex = state.color || "#000000";
      value.replaceChildren(el("span", { class: "swatch" }, hex));
      value.style.color = hex === "#000000" ? "" : hex;
      if (document.activeElement !== picker && hex !== "#000000") picker.value = hex;
    };
  } else if (kind === "cover") {
    const s = slider({ min: 0, max: 100, step: 1, label: `${dev.name} position`,
      onCommit: (v) => call("set_position", { position: v }, { timeout: 180000, quiet: ["BUSY"] }) });
    row(btn("Open", () => call("open")), btn("Stop", () => call("stop")), btn("Close", () => call("close")));
    row(s.input);
    render = () => {
      const pos = state.position == null ? null : Math.round(Number(state.position));
      const target = state.target != null && state.state !== "stopped" ? ` → ${Math.round(state.target)} %` : "";
      value.textContent = `${pos == null ? "?" : pos} % · ${state.state || "?"}${target}`;
      s.set(pos);
    };
  } else if (kind === "motor") {
    const s = slider({ min: -100, max: 100, step: 5, label: `${dev.name} speed`, onCommit: (v) => call("value", { value: v / 100 }) });
    row(btn("Stop", () => call("stop")));
    row(s.input);
    render = () => {
      const v = Number(state.value) || 0;
      value.textContent = v === 0 ? "stopped" : `${state.direction || (v > 0 ? "forward" : "backward")} ${Math.round(Math.abs(v) * 100)} %`;
      s.set(Math.round(v * 100));
    };
  } else if (kind === "servo") {
    const r = dev.range || { min: -1, max: 1, step: 0.05, unit: "", key: "value" };
    const method = r.key === "angle" ? "angle" : "value";
    const s = slider({ min: r.min, max: r.max, step: r.step, label: `${dev.name} ${r.key}`, onCommit: (v) => call(method, { [method]: v }) });
    row(btn("Min", () => call("min")), btn("Mid", () => call("mid")), btn("Max", () => call("max")),
      hasMethod(dev, "detach") ? btn("Detach", () => call("detach")) : null);
    row(s.input);
    render = () => {
      const v = state[r.key];
      value.textContent = v == null ? "detached" : `${Number(v).toFixed(r.key === "angle" ? 0 : 2)}${r.unit || ""}`;
      s.set(v);
    };
  } else if (kind === "number") {
    const r = dev.range || { min: 0, max: 1, step: 0.01, unit: "", key: "value" };
    const s = slider({ min: r.min, max: r.max, step: r.step, label: `${dev.name} level`, onCommit: (v) => call("value", { value: v }) });
    const mute = hasMethod(dev, "mute") ? el("button", { type: "button", class: "w toggle", "aria-pressed": "false",
      onclick: () => call(state.muted ? "unmute" : "mute") }, "Mute") : null;
    row(s.input);
    if (mute) row(mute);
    render = () => {
      value.textContent = `${state[r.key] == null ? "?" : Number(state[r.key]).toFixed(r.step < 1 ? 2 : 0)}${r.unit ? ` ${r.unit}` : ""}${state.muted ? " (muted)" : ""}`;
      s.set(state[r.key]);
      if (mute) mute.setAttribute("aria-pressed", String(!!state.muted));
    };
  } else if (kind === "sensor") {
    const chart = sensorChart(dev, root, value);
    render = () => chart.state(state);
    extra.history = (doc) => chart.history(doc);
    if (ctx.simulated && hasMethod(dev, "sim_fail")) {
      sims.append(el("div", { class: "hint" }, "Simulated sensor"),
        el("div", { class: "row" },
          btn("Stop answering", () => call("sim_fail", { failed: true }), "s"),
          btn("Answer again", () => call("sim_fail", { failed: false }), "s")));
    }
  } else if (kind === "input") {
    let simSlider = null;
    render = () => {
      if (simSlider) simSlider.set(state.value);
      if (dev.type === "DistanceSensor") value.textContent = state.distance == null ? "?" : `${Number(state.distance).toFixed(3)} m`;
      else if (has(dev, "motion")) value.textContent = state.is_active ? "motion" : "no motion";
      else if (has(dev, "button")) value.textContent = state.is_held ? "held" : state.is_pressed ? "pressed" : "released";
      else if (state.voltage != null) value.textContent = `${Number(state.voltage).toFixed(3)} V`;
      else value.textContent = state.is_active ? "active" : "inactive";
    };
    if (ctx.simulated) {
      const label = el("div", { class: "hint" }, "Simulated input");
      sims.append(label);
      if (hasMethod(dev, "sim_press")) {
        const [on, off] = has(dev, "motion") ? ["Motion", "No motion"] : ["Press", "Release"];
        sims.append(el("div", { class: "row" },
          btn(on, () => call("sim_press"), "s"), btn(off, () => call("sim_release"), "s")));
      } else if (hasMethod(dev, "sim_set")) {
        const p = param(dev, "sim_set", "value") || { min: 0, max: 1 };
        const lo = p.min ?? 0;
        const hi = p.max ?? 1;
        simSlider = slider({ min: lo, max: hi, step: (hi - lo) / 100, label: `${dev.name} simulated value`, onCommit: (v) => call("sim_set", { value: v }) });
        simSlider.input.className = "s";
        sims.append(el("div", { class: "row" }, simSlider.input));
      }
    }
  } else {
    const simple = (dev.method_params || []).filter((m) => !m.params.some((p) => p.required) && m.name !== "state" && !m.simulation_only);
    row(...simple.map((m) => btn(m.name, () => call(m.name))));
  }
  if (dev.lease_required) notes.append(el("span", { "data-role": "lease-note" }, "Needs a control lease. "));

  const recent = [];
  return {
    root,
    state(doc) {
      state = doc;
      root.dataset.active = String(!!doc.is_active);
      try { render(); } catch { value.textContent = "?"; }
      const lock = root.querySelector("[data-role=lockout]");
      if (lock) lock.remove();
      if (doc.lockout_until) notes.append(el("span", { "data-role": "lockout" }, `Locked out until ${fmtTime(doc.lockout_until)}.`));
    },
    /** A sensor's kept readings of the last hour ({root}/device/<name>/history). */
    history(doc) {
      if (extra.history) extra.history(doc);
    },
    event(doc) {
      recent.unshift(`${fmtTime(doc.ts)} ${doc.event}`);
      recent.length = Math.min(recent.length, 5);
      events.hidden = false;
      events.replaceChildren(...recent.map((t) => el("li", {}, t)));
    },
    /** ``why``/``simWhy``: why the controls / simulated inputs cannot work (null: they can). */
    enable({ why: reason, simWhy, readonly }) {
      for (const c of root.querySelectorAll(".w")) { c.disabled = !!reason; c.title = reason || ""; }
      for (const c of root.querySelectorAll(".s")) { c.disabled = !!simWhy; c.title = simWhy || ""; }
      sims.hidden = !ctx.simulated;
      root.classList.toggle("readonly", readonly);
      // The simulated inputs' own reason shows only when the device has no other control.
      const shown = controls.querySelector(".w") ? reason : ctx.simulated ? simWhy : null;
      why.hidden = !shown;
      why.textContent = shown || "";
    },
    /** What went wrong with the last command sent from this card (null: nothing). */
    problem(text) {
      problem.hidden = !text;
      problem.textContent = text || "";
    },
  };
}

function stripTs(doc) {
  const { ts, ...rest } = doc || {};
  return rest;
}

// ---------------------------------------------------------------- sensors
const HOUR_MS = 3600 * 1000;
const SVG = "http://www.w3.org/2000/svg";
const svgEl = (tag, attrs = {}) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
};
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const fmtNum = (v, unit) => (isNum(v) ? `${v}${unit ? ` ${unit}` : ""}` : "—");

/** A sensor's values with their units, whether it answers (and why not), and per value a
 * sparkline of the last hour: the gatekeeper's kept history, extended by the live states
 * (at most one point per the history's step, the latest of it, as the gatekeeper keeps). */
function sensorChart(dev, root, value) {
  const readings = el("div", { class: "readings" });
  const error = el("p", { class: "error", "data-role": "sensor-error", hidden: true });
  value.after(error, readings);
  const rows = new Map(); // value name -> {num, svg, points: [[ms, v|null]], fromHistory}
  let units = {};
  let step = 10000; // ms, until the history says
  let state = {};

  const rowOf = (key) => {
    let row = rows.get(key);
    if (row) return row;
    const num = el("span", { class: "num", "data-role": "reading" }, "…");
    const svg = svgEl("svg", { class: "spark", viewBox: "0 0 120 32", preserveAspectRatio: "none",
      role: "img", "data-role": "chart", "data-points": 0, "data-history": 0 });
    row = { num, svg, points: [], fromHistory: 0 };
    rows.set(key, row);
    readings.append(el("div", { class: "reading", "data-key": key },
      el("span", { class: "label" }, key.replace(/_/g, " ")), num, svg));
    return row;
  };

  const add = (row, ms, v) => {
    const pts = row.points;
    const last = pts[pts.length - 1];
    if (last && ms < last[0]) return;
    if (last && Math.floor(last[0] / step) === Math.floor(ms / step)) pts[pts.length - 1] = [ms, v];
    else pts.push([ms, v]);
  };

  const draw = (key, row) => {
    const now = Date.now();
    while (row.points.length && row.points[0][0] < now - HOUR_MS) row.points.shift();
    const pts = row.points;
    const nums = pts.filter((p) => isNum(p[1]));
    row.svg.replaceChildren();
    row.svg.setAttribute("data-points", String(nums.length));
    row.svg.setAttribute("data-history", String(row.fromHistory));
    const unit = units[key] || "";
    if (!nums.length) return;
    const t0 = pts[0][0];
    const t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
    let lo = Math.min(...nums.map((p) => p[1]));
    let hi = Math.max(...nums.map((p) => p[1]));
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const x = (ms) => (pts.length === 1 ? 60 : ((ms - t0) / (t1 - t0)) * 118 + 1);
    const y = (v) => 30 - ((v - lo) / (hi - lo)) * 28;
    let d = "";
    let pen = false;
    for (const [ms, v] of pts) {
      if (!isNum(v)) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(ms).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = true;
    }
    const [lastMs, lastV] = nums[nums.length - 1];
    row.svg.append(
      svgEl("title", {}),
      svgEl("path", { d, fill: "none", "vector-effect": "non-scaling-stroke" }),
      svgEl("circle", { cx: x(lastMs).toFixed(1), cy: y(lastV).toFixed(1), r: 1.8 }));
    const [min, max] = [Math.min(...nums.map((p) => p[1])), Math.max(...nums.map((p) => p[1]))];
    const minutes = Math.max(1, Math.round((now - t0) / 60000));
    row.svg.firstChild.textContent = `${key}, last ${minutes} min: ${nums.length} points, min ${fmtNum(min, unit)}, max ${fmtNum(max, unit)}`;
    row.svg.setAttribute("aria-label", row.svg.firstChild.textContent);
  };

  const drawAll = () => { for (const [key, row] of rows) draw(key, row); };

  return {
    state(doc) {
      state = doc || {};
      units = { ...units, ...(state.units || {}) };
      const keys = Object.keys(state.units || {});
      const up = state.available !== false;
      root.classList.toggle("unavailable", !up);
      root.dataset.available = String(up);
      error.hidden = up;
      error.textContent = up ? "" : `Not answering: ${state.error || "no reading"}`;
      const first = keys[0];
      value.textContent = !up ? "unavailable" : first ? fmtNum(state[first], units[first]) : "?";
      const ms = Date.parse(state.ts) || Date.now();
      for (const key of keys) {
        const row = rowOf(key);
        const v = up && isNum(state[key]) ? state[key] : null;
        row.num.textContent = fmtNum(v, units[key]);
        add(row, ms, v);
      }
      drawAll();
    },
    history(doc) {
      if (!doc || !Array.isArray(doc.t) || !doc.values) return;
      if (isNum(doc.step) && doc.step > 0) step = doc.step * 1000;
      units = { ...(doc.units || {}), ...units };
      const base = Number(doc.t0) * 1000;
      for (const [key, list] of Object.entries(doc.values)) {
        if (!Array.isArray(list)) continue;
        const row = rowOf(key);
        const kept = doc.t.map((t, i) => [base + Number(t) * 1000, isNum(list[i]) ? list[i] : null]);
        const lastKept = kept.length ? kept[kept.length - 1][0] : -Infinity;
        // What came live after the document was made stays (it is newer).
        const live = row.points.filter((p) => p[0] > lastKept);
        row.points = [];
        for (const [ms, v] of [...kept, ...live]) add(row, ms, v);
        row.fromHistory = kept.filter((p) => isNum(p[1])).length;
      }
      drawAll();
    },
  };
}
