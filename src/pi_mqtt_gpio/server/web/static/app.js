// The dashboard: one MQTT 5 connection over WebSocket, as the user who logged in (or
// anonymously when the node lets anonymous clients in). It reads the node's retained twin
// (catalogue, states, leases, health), its events and audit, and calls devices with
// MQTT 5 request/response, exactly like any other client: the broker's ACL, the rights,
// the leases and the safety guards apply to it unchanged.
import mqtt from "./vendor/mqtt.esm.js";
import { makeCard } from "./cards.js";
import { loadTopics, parseTopic, topic } from "./topics.js";
import { $, el, fmtTime, toast, topicMatches } from "./util.js";

const params = new URLSearchParams(location.search);
const ACCESS = "gatekeeper-access";
const AUTH_CODES = new Set([4, 5, 134, 135, 140]); // bad user name or password / not authorized

const app = {
  info: null,          // /node.json when a gatekeeper serves the page itself
  single: false,       // that gatekeeper has devices: its page only (else: the node list)
  client: null,
  creds: null,         // {username, password} while logged in (memory only)
  access: null,        // what CONNACK said we may do (null: unknown, e.g. another broker)
  reply: null,         // our reply prefix
  clientId: null,
  connected: false,
  base: params.get("base") || "gatekeeper",
  broker: null,        // a ?broker= that may be used (else: this page's own server)
  nodes: new Map(),    // node_id -> {catalogue, status}
  node: null,          // node_id shown
  root: null,
  catalogue: null,
  cards: new Map(),
  online: false,
  status: null,        // the node's status topic as last read (null: not read yet)
  lost: false,         // the connection dropped and is being re-established
  leases: null,
  leaseIds: new Map(), // our lease ids by device key
  pending: new Map(),  // correlation -> {resolve, timer, late?, onLate?}
  seq: 0,
  subscribed: [],
  published: 0,        // every PUBLISH this page sent (the browser test counts them)
};
window.gatekeeperDashboard = app;

// The login goes only to this page's own server, or to a broker named by ?broker= that is
// this page's own origin or listed in brokers.json next to the page (the gatekeeper serves
// its listener's dashboard_brokers there). Anything else in ?broker= is ignored, visibly.
function ownBroker() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${(app.info && app.info.mqtt_path) || "/mqtt"}`;
}

function brokerAllowed(url, listed) {
  let u;
  try { u = new URL(url); } catch { return false; }
  if (u.protocol !== "ws:" && u.protocol !== "wss:") return false;
  const own = location.protocol === "https:" ? "wss:" : "ws:";
  if (u.protocol === own && u.host === location.host && !u.username && !u.password) return true;
  return listed.some((b) => { try { return new URL(b).href === u.href; } catch { return false; } });
}

function brokerUrl() {
  return app.broker || ownBroker();
}

async function chooseBroker() {
  const asked = params.get("broker");
  if (!asked) return;
  let listed = [];
  try {
    const res = await fetch("brokers.json", { cache: "no-store" });
    const body = res.ok ? await res.json() : [];
    listed = Array.isArray(body) ? body.filter((b) => typeof b === "string") : [];
  } catch { listed = []; }
  if (brokerAllowed(asked, listed)) app.broker = asked;
  else notice(`The broker in this page's address (${asked}) is not one this dashboard may use: it was ignored, and this page logs in to its own server.`);
}

const external = () => !!app.catalogue && app.catalogue.broker === "external";
// On the node list (no node shown yet) a fleet shows in the nodes' catalogues.
const fleet = () => external() || (!app.root
  && [...app.nodes.values()].some((n) => n.catalogue && n.catalogue.broker === "external"));
const suffix = () => (external() && app.creds ? `/${app.creds.username}` : "");
const at = (vars = {}) => ({ root: app.root, base_topic: app.base, ...vars });
export const callTopic = (name) => topic("device", at({ name, leaf: "call" })) + suffix();
const leaseTopic = () => topic("lease_call", at()) + suffix();

export function mayPublish(topic) {
  if (!app.access) return true; // unknown (another broker): the broker and the node decide
  if (app.access.deny.some((f) => topicMatches(f, topic))) return false;
  return app.access.publish.some((f) => topicMatches(f, topic));
}
export const hasRight = (right) => !app.access || app.access.rights.includes(right);
export const live = () => app.connected && app.online;

/** Seconds the page waits for a command's reply before it says that none came. */
export const ANSWER_S = 10;

/** Why a command to ``topic`` cannot work right now (null: it can), ``todo`` saying what it
 * would do. Shown next to the controls before anything is clicked, and checked again when
 * a command is sent. */
function blocked(topic, todo) {
  const node = app.node || "the node";
  if (!app.connected) return app.lost ? "Not connected: reconnecting to the broker…" : "Not connected to the broker.";
  if (app.status === null) return `Waiting for ${node} to say whether it is online…`;
  if (!app.online) return `${node} is offline: its devices cannot be controlled until it is back.`;
  // A node on a shared broker only reads commands whose last level is the sender's user
  // name (the broker guarantees it): an anonymous visitor has none to give.
  if (external() && !app.creds) return `Log in to ${todo}: in a fleet every command names its sender, and an anonymous visitor has no user name.`;
  if (!mayPublish(topic)) return `View only: ${whoAmI()} may not ${todo}.`;
  return null;
}

/** Lasting reasons (the role, no user name), as opposed to a node offline for a while. */
const viewOnly = (topic) => (external() && !app.creds) || (!!app.access && !mayPublish(topic));

export const whyNot = (name) => blocked(callTopic(name), `control ${name}`);
const whyNotLease = () => blocked(leaseTopic(), "take control leases");

function whyNotSimulate(name) {
  const why = whyNot(name);
  if (why) return why;
  if (!hasRight("simulate")) return `Simulated inputs need the simulate right, which ${whoAmI()} does not have.`;
  return null;
}

const whoAmI = () => {
  const role = app.access && app.access.role ? ` (role ${app.access.role})` : "";
  return app.creds ? `${app.creds.username}${role}` : `an anonymous visitor${role}`;
};

// ---------------------------------------------------------------- connection
function connect(creds) {
  if (app.client) app.client.end(true);
  app.creds = creds;
  app.access = null;
  setConn("connecting", "connecting…");
  const clientId = `web-${Math.random().toString(36).slice(2, 10)}`;
  const client = mqtt.connect(brokerUrl(), {
    protocolVersion: 5, clientId, clean: true, keepalive: 30, reconnectPeriod: 1000,
    connectTimeout: 8000, resubscribe: false,
    username: creds ? creds.username : undefined,
    password: creds ? creds.password : undefined,
    properties: { requestResponseInformation: true, userProperties: { [ACCESS]: "1" } },
  });
  app.client = client;
  app.clientId = clientId;
  client.on("connect", (connack) => {
    if (client !== app.client) return;
    const props = connack.properties || {};
    const raw = props.userProperties && props.userProperties[ACCESS];
    try { app.access = raw ? JSON.parse(Array.isArray(raw) ? raw[0] : raw) : null; }
    catch { app.access = null; }
    app.reply = (app.access && app.access.reply) || props.responseInformation || null;
    app.connected = true;
    app.lost = false;
    setConn("online", "connected");
    $("#login").hidden = true;
    showWho();
    app.subscribed = [];
    subscribeAll();
    refreshControls();
  });
  client.on("message", onMessage);
  client.on("error", (err) => {
    if (client !== app.client) return;
    if (AUTH_CODES.has(err.code)) {
      client.end(true);
      app.connected = false;
      setConn("closed", "not logged in");
      showLogin(creds ? "Wrong user name or password, or this user may not connect." : null);
    }
  });
  client.on("close", () => {
    if (client !== app.client || !app.connected) return;
    app.connected = false;
    app.lost = true;
    setConn("reconnecting", "reconnecting…");
    for (const [, p] of app.pending) {
      clearTimeout(p.timer);
      if (!p.late) p.resolve({ ok: false, error: { code: "TIMEOUT", message: "connection lost before an answer came: the command may or may not have been carried out" } });
    }
    app.pending.clear();
    refreshControls();
  });
}

function subscribeAll() {
  const filters = [];
  if (!app.single) filters.push(topic("any_node", at({ leaf: "devices" })), topic("any_node", at({ leaf: "status" })));
  if (app.root) {
    for (const kind of ["status", "devices", "lease", "health", "audit"]) filters.push(topic(kind, at()));
    for (const leaf of ["state", "event", "history"]) filters.push(topic("device", at({ name: "+", leaf })));
  }
  const reply = replyPrefix();
  if (reply) filters.push(`${reply}/#`);
  const todo = filters.filter((f) => !app.subscribed.includes(f));
  if (!todo.length) return;
  app.subscribed.push(...todo);
  app.client.subscribe(todo, { qos: 1 }, () => {});
}

function replyPrefix() {
  if (!app.root) return null;
  // A node on another broker answers where we ask; the broker's ACL lets each user read
  // its own <root>/reply/<username>/# (Mosquitto: pattern read gatekeeper/+/reply/%u/#).
  if (external()) return topic("reply_prefix", at({ client_id: app.creds ? app.creds.username : app.clientId }));
  return app.reply || topic("reply_prefix", at({ client_id: app.clientId }));
}

function onMessage(t, payload, packet) {
  const text = new TextDecoder().decode(payload);
  const reply = replyPrefix();
  if (reply && t.startsWith(reply + "/")) return onReply(t, text, packet);
  if (!app.single) {
    const node = parseTopic("root", t.split("/").slice(0, -1).join("/"), { base_topic: app.base });
    const leaf = t.split("/").pop();
    if (node && (leaf === "devices" || leaf === "status")) noteNode(node.node_id, leaf, text);
  }
  if (!app.root) return;
  const known = at();
  const on = (kind) => parseTopic(kind, t, known) !== null;
  if (on("status")) return setOnline(text === "online");
  if (on("devices")) return setCatalogue(text);
  if (on("lease")) return setLeases(parse(text));
  if (on("health")) return setHealth(parse(text));
  if (on("audit")) return addAudit(parse(text));
  const m = parseTopic("device", t, known);
  if (!m || !["state", "event", "history"].includes(m.leaf)) return;
  const card = app.cards.get(m.name);
  const doc = parse(text);
  if (!card || !doc) return;
  if (m.leaf === "state") card.state(doc);
  else if (m.leaf === "history") card.history(doc);
  else card.event(doc);
}

const parse = (text) => { try { return JSON.parse(text); } catch { return null; } };

// ---------------------------------------------------------------- calls
/** Call a method on the node: resolves with the reply ({ok, result} or {ok: false, error}).
 * No reply within ``timeout`` ms resolves with the page's own code NO_ANSWER; a reply that
 * comes later still goes to ``onLate`` (for a few minutes). */
export function call(topic, method, kwargs = {}, { timeout = ANSWER_S * 1000, onLate = null } = {}) {
  const reply = replyPrefix();
  if (!app.connected || !reply) return Promise.resolve({ ok: false, error: { code: "TIMEOUT", message: "not connected" } });
  const id = `${Date.now().toString(36)}-${++app.seq}`;
  const node = app.node || "the gatekeeper";
  const sent = Date.now();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      const p = app.pending.get(id);
      if (!p) return;
      resolve({ ok: false, error: { code: "NO_ANSWER", message: `no answer from ${node} within ${Math.round(timeout / 1000)} s: the command was not carried out or not acknowledged` } });
      if (!onLate) { app.pending.delete(id); return; }
      p.late = true;
      p.timer = setTimeout(() => app.pending.delete(id), LATE_MS);
    }, timeout);
    app.pending.set(id, { resolve, timer, sent, onLate });
    app.published += 1;
    app.client.publish(topic, JSON.stringify({ method, kwargs }), {
      qos: 1, properties: { responseTopic: `${reply}/${id}`, correlationData: new TextEncoder().encode(id) },
    }, (err) => {
      if (!err) return;
      clearTimeout(timer);
      app.pending.delete(id);
      resolve({ ok: false, error: { code: "NOT_AUTHORIZED", message: `the broker refused the command (${err.code || err.message})` } });
    });
  });
}

const LATE_MS = 300000; // how long a reply that came too late is still noticed

function onReply(topic, text) {
  const id = topic.slice(replyPrefix().length + 1);
  const pending = app.pending.get(id);
  if (!pending) return;
  app.pending.delete(id);
  clearTimeout(pending.timer);
  const doc = parse(text) || { ok: false, error: { code: "BAD_REQUEST", message: "unreadable reply" } };
  if (pending.late) pending.onLate(doc, (Date.now() - pending.sent) / 1000);
  else pending.resolve(doc);
}

/** A device call from a control: a control that cannot work sends nothing and says why;
 * refusals and commands left unanswered are shown on the card (and as a toast) with their
 * code and retry_after. */
export async function command(name, method, kwargs = {}, opts = {}) {
  const what = `${name}.${method}`;
  const cardOf = () => app.cards.get(name);
  const why = whyNot(name);
  if (why) {
    if (cardOf()) cardOf().problem(`${what} was not sent. ${why}`);
    return { ok: false, error: { code: "NOT_SENT", message: why } };
  }
  const onLate = (doc, after) => {
    const card = cardOf();
    if (doc.ok) {
      if (card) card.problem(null);
      toast(`${what} was answered late (after ${after.toFixed(1)} s): done.`);
    } else {
      const text = refusal(what, doc.error || {});
      if (card) card.problem(`${text} (answered after ${after.toFixed(1)} s)`);
      toast(text, "bad");
    }
  };
  const res = await call(callTopic(name), method, kwargs, { ...opts, onLate });
  const card = cardOf();
  if (res.ok) {
    if (card) card.problem(null);
  } else {
    const error = res.error || {};
    const quiet = (opts.quiet || []).includes(error.code);
    if (card) card.problem(quiet ? null : refusal(what, error));
    if (!quiet) toast(refusal(what, error), "bad");
  }
  return res;
}

function refusal(what, error) {
  if (error.code === "NO_ANSWER") return `${what}: ${error.message}.`;
  const retry = error.retry_after != null ? ` — retry in ${Number(error.retry_after).toFixed(1)} s` : "";
  return `${what} refused: ${error.code || "ERROR"}${retry}. ${error.message || ""}`;
}

function refused(what, error) {
  toast(refusal(what, error), "bad");
}

// ---------------------------------------------------------------- node list (shared broker)
function noteNode(id, leaf, text) {
  const node = app.nodes.get(id) || { id, catalogue: null, status: "unknown" };
  if (leaf === "status") node.status = text || "unknown";
  else node.catalogue = parse(text);
  if (!text && leaf === "devices") app.nodes.delete(id); else app.nodes.set(id, node);
  renderNodes();
}

function renderNodes() {
  const list = $("#node-list");
  // A broker-only node (no devices, e.g. the hub serving this page) has nothing to show.
  const shown = [...app.nodes.values()].filter((n) => !n.catalogue || n.catalogue.devices.length > 0);
  list.replaceChildren(...shown.sort((a, b) => a.id.localeCompare(b.id)).map((n) =>
    el("li", {}, el("a", { href: `#node=${encodeURIComponent(n.id)}`, "data-node": n.id },
      el("span", {}, n.id, " ", el("small", { class: "hint" },
        n.catalogue ? `${n.catalogue.devices.length} devices` : "")),
      el("span", { class: "pill", "data-state": n.status }, n.status)))));
  $("#no-nodes").hidden = shown.length > 0;
  updateBanner();
}

function route() {
  if (app.single) return showNode(app.info.node_id, app.info.root);
  const m = location.hash.match(/^#node=(.+)$/);
  if (!m) {
    showNode(null, null);
    $("#nodes").hidden = false;
    return;
  }
  const id = decodeURIComponent(m[1]);
  const known = app.nodes.get(id);
  showNode(id, (known && known.catalogue && known.catalogue.root) || topic("root", at({ node_id: id })));
}

function showNode(id, root) {
  if (app.client && app.root && app.root !== root) {
    const old = app.subscribed.filter((f) => f.startsWith(app.root + "/"));
    if (old.length) app.client.unsubscribe(old);
    app.subscribed = app.subscribed.filter((f) => !old.includes(f));
  }
  app.node = id;
  app.root = root;
  app.catalogue = null;
  app.cards.clear();
  app.online = false;
  app.status = null;
  $("#devices").replaceChildren();
  $("#lease-list").replaceChildren();
  $("#audit-list").replaceChildren();
  $("#health-body").textContent = "no report yet";
  $("#node").hidden = !root;
  $("#nodes").hidden = !!root;
  $("#node-title").textContent = id || "";
  $("#node-status").hidden = !root;
  document.title = id ? `${id} — GPIO Gatekeeper` : "GPIO Gatekeeper";
  if (app.connected) subscribeAll();
  refreshControls();
}

// ---------------------------------------------------------------- twin
function setOnline(online) {
  app.online = online;
  app.status = online ? "online" : "offline";
  const pill = $("#node-status");
  pill.dataset.state = online ? "online" : "offline";
  pill.textContent = online ? "online" : "offline";
  document.body.classList.toggle("node-offline", !online);
  refreshControls();
}

function setCatalogue(text) {
  const doc = parse(text);
  if (!doc || !Array.isArray(doc.devices)) return;
  const same = app.catalogue && JSON.stringify(app.catalogue) === text;
  app.catalogue = doc;
  if (same) return;
  app.cards.clear();
  const grid = $("#devices");
  grid.replaceChildren();
  for (const dev of doc.devices) {
    const card = makeCard(dev, { command, simulated: !!doc.simulated });
    app.cards.set(dev.name, card);
    grid.append(card.root);
  }
  $("#lease-devices").replaceChildren(...doc.devices.filter((d) => d.kind === "output").map((d) =>
    el("option", { value: d.name }, d.name)));
  subscribeAll(); // the reply prefix may depend on the broker mode
  refreshControls();
  if (app.leases) setLeases(app.leases);
}

export function refreshControls() {
  document.body.classList.toggle("disconnected", !app.connected);
  // A control that cannot work is disabled and says why (on the card, and as the tooltip
  // of each disabled control).
  for (const [name, card] of app.cards) {
    card.enable({ why: whyNot(name), simWhy: whyNotSimulate(name), readonly: viewOnly(callTopic(name)) });
  }
  const leaseWhy = !app.root ? null : whyNotLease();
  $("#lease-form").hidden = !app.root || (!!app.access && !mayPublish(leaseTopic()));
  for (const c of $("#lease-form").querySelectorAll("button, input, select")) {
    c.disabled = !!leaseWhy;
    c.title = leaseWhy || "";
  }
  for (const b of document.querySelectorAll("#lease-list button")) {
    b.disabled = !!leaseWhy;
    b.title = leaseWhy || "";
  }
  $("#lease-why").hidden = !leaseWhy || $("#lease-form").hidden;
  $("#lease-why").textContent = leaseWhy || "";
  updateBanner();
}


function setHealth(doc) {
  if (!doc) return;
  const body = $("#health-body");
  const lines = doc.gpio && Array.isArray(doc.gpio.lines) ? doc.gpio.lines : [];
  const ours = lines.filter((l) => l.owner === "ours").length;
  const other = lines.filter((l) => l.used && l.owner !== "ours").length;
  body.replaceChildren(
    el("div", { class: `health-${doc.status}`, id: "health-status" }, doc.status || "unknown"),
    el("div", { class: "hint" }, `${ours} GPIO lines held by the gatekeeper`
      + (other ? `, ${other} by other programs` : "") + (doc.gpio && doc.gpio.chip ? ` (chip ${doc.gpio.chip})` : "")),
    ...(doc.problems || []).map((p) => el("div", { class: "error" }, p)),
    el("div", { class: "hint" }, `reported ${fmtTime(doc.ts)}`));
}

function addAudit(doc) {
  if (!doc) return;
  const list = $("#audit-list");
  const who = doc.username || doc.client_id || "?";
  const args = doc.kwargs && Object.keys(doc.kwargs).length ? JSON.stringify(doc.kwargs) : "";
  const outcome = doc.ok ? "ok" : (doc.error && doc.error.code) || "refused";
  list.prepend(el("li", { class: doc.ok ? "" : "bad" },
    `${fmtTime(doc.ts)} ${who} ${doc.device}.${doc.method || "?"}(${args}) via ${doc.source}: ${outcome}`));
  while (list.children.length > 100) list.lastChild.remove();
}

// ---------------------------------------------------------------- leases
function setLeases(doc) {
  if (!doc || !Array.isArray(doc.leases)) return;
  app.leases = doc;
  $("#lease-devices-label").hidden = doc.scope !== "device";
  const list = $("#lease-list");
  list.replaceChildren(...(doc.leases.length ? doc.leases.map(leaseRow)
    : [el("p", { class: "hint" }, `No leases held (scope: ${doc.scope}).`)]));
  refreshControls();
  tickLeases();
}

function leaseRow(lease) {
  const mine = lease.client_id === app.clientId
    || (external() && !!app.creds && lease.username === app.creds.username);
  const key = leaseKey(lease.devices);
  const row = el("div", { class: "lease", "data-expires": lease.expires },
    el("span", { class: "who" }, mine ? "you" : lease.holder),
    el("span", {}, lease.devices ? lease.devices.join(", ") : "all devices"),
    el("span", { class: "ttl" }, ""));
  if (mine) {
    row.append(
      el("button", { type: "button", onclick: () => leaseCall("renew", { devices: lease.devices || undefined, ttl: lease.ttl, lease_id: app.leaseIds.get(key) }) }, "Renew"),
      el("button", { type: "button", onclick: () => leaseCall("release", { lease_id: app.leaseIds.get(key), devices: app.leaseIds.has(key) ? undefined : lease.devices || undefined }) }, "Release"));
  } else if (hasRight("force_release") && app.access) {
    row.append(el("button", { type: "button", onclick: () => leaseCall("release", { devices: lease.devices || undefined, force: true }) }, "Break"));
  }
  return row;
}

const leaseKey = (devices) => (devices ? [...devices].sort().join(",") : "*");

async function leaseCall(method, kwargs) {
  for (const k of Object.keys(kwargs)) if (kwargs[k] === undefined) delete kwargs[k];
  const res = await call(leaseTopic(), method, kwargs);
  if (!res.ok) return refused(`lease ${method}`, res.error || {});
  if (method === "acquire" || method === "renew") {
    app.leaseIds.set(leaseKey(res.result.devices), res.result.lease_id);
    toast(`Lease ${method === "acquire" ? "acquired" : "renewed"} until ${fmtTime(res.result.expires)}`);
  } else {
    toast("Lease released");
  }
}

function tickLeases() {
  for (const row of document.querySelectorAll("#lease-list .lease")) {
    const left = Math.max(0, Math.round((Date.parse(row.dataset.expires) - Date.now()) / 1000));
    row.querySelector(".ttl").textContent = `${left} s left`;
  }
}

// ---------------------------------------------------------------- page chrome
function setConn(state, text) {
  const pill = $("#conn");
  pill.dataset.state = state;
  pill.textContent = text;
}

/** The one banner, from the page's state: the connection lost, the node offline, or an
 * anonymous visitor in a fleet (who can watch but not control: log in). */
function updateBanner() {
  if (app.lost && !app.connected) return banner("Connection to the gatekeeper lost — reconnecting…", "bad");
  if (!app.connected) return banner(null);
  if (app.root && app.status === "offline") return banner(`${app.node || "The gatekeeper"} is offline: its devices cannot be controlled.`, "bad");
  if (fleet() && !app.creds) {
    return banner("You are not logged in. Every command in a fleet names its sender, so an anonymous visitor can watch but not control: log in to control devices.",
      "login", { label: "Log in", id: "banner-login", onclick: () => showLogin(null) });
  }
  return banner(null);
}

function banner(text, kind, action) {
  const b = $("#banner");
  b.hidden = !text;
  b.replaceChildren(...(text ? [el("span", {}, text)] : []),
    ...(text && action ? [el("button", { type: "button", id: action.id, onclick: action.onclick }, action.label)] : []));
  if (kind) b.dataset.kind = kind; else delete b.dataset.kind;
}

function notice(text) {
  const n = $("#notice");
  n.hidden = false;
  n.textContent = text;
}

function showWho() {
  const role = app.access && app.access.role ? ` (${app.access.role})` : "";
  $("#who").textContent = app.creds ? `${app.creds.username}${role}` : `anonymous${role}`;
  $("#login-open").hidden = !!app.creds;
  $("#logout").hidden = !app.creds;
}

function showLogin(error) {
  $("#login").hidden = false;
  $("#node").hidden = true;
  $("#nodes").hidden = true;
  const e = $("#login-error");
  e.hidden = !error;
  e.textContent = error || "";
  $("#username").focus();
}

function hideLogin() {
  $("#login").hidden = true;
  route();
}

async function start() {
  await loadTopics();
  try {
    const res = await fetch("node.json", { cache: "no-store" });
    app.info = res.ok ? await res.json() : null;
  } catch { app.info = null; }
  await chooseBroker();
  app.single = !!app.info && app.info.devices > 0 && !params.has("nodes");
  if (app.info && !params.get("base")) app.base = app.info.base_topic;
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const creds = { username: $("#username").value.trim(), password: $("#password").value };
    $("#password").value = "";
    hideLogin();
    connect(creds);
  });
  $("#login-open").addEventListener("click", () => showLogin(null));
  $("#logout").addEventListener("click", () => {
    app.creds = null;
    if (app.info && !app.info.anonymous) {
      app.client.end(true);
      app.connected = false;
      setConn("closed", "logged out");
      showLogin(null);
    } else connect(null);
  });
  window.addEventListener("hashchange", route);
  setInterval(tickLeases, 1000);
  route();
  if (app.info && !app.info.anonymous) showLogin(null);
  else connect(null);
}

$("#lease-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const devices = [...$("#lease-devices").selectedOptions].map((o) => o.value);
  const ttl = Number($("#lease-ttl").value) || 60;
  leaseCall("acquire", { devices: app.leases && app.leases.scope === "device" && devices.length ? devices : undefined, ttl });
});

start();
