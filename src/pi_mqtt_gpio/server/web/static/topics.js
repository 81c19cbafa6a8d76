// The topic grammar: templates served by the gatekeeper as /topics.json, made by the same
// code that builds the server's topics (so page and server cannot disagree). A template's
// placeholders are {root}, {base_topic}, {name}, {leaf} and {client_id}.
let grammar = null;

/** Load the grammar once, before any topic is built. */
export async function loadTopics() {
  const res = await fetch("topics.json", { cache: "no-store" });
  if (!res.ok) throw new Error(`topics.json: HTTP ${res.status}`);
  grammar = await res.json();
}

/** The topic (or filter) ``kind`` with its placeholders filled from ``vars``. */
export function topic(kind, vars) {
  return grammar[kind].replace(/\{(\w+)\}/g, (_, k) => {
    if (vars[k] === undefined) throw new Error(`topic ${kind}: no ${k}`);
    return vars[k];
  });
}

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The placeholders of ``kind`` that ``t`` fills, given the ones in ``known`` (e.g. root);
 * null when ``t`` is not a topic of that kind. A placeholder matches one topic level. */
export function parseTopic(kind, t, known) {
  const names = [];
  const pattern = grammar[kind].split(/(\{\w+\})/).map((part) => {
    const m = part.match(/^\{(\w+)\}$/);
    if (!m) return escape(part);
    if (known[m[1]] !== undefined) return escape(known[m[1]]);
    names.push(m[1]);
    return "([^/]+)";
  }).join("");
  const found = t.match(new RegExp(`^${pattern}$`));
  if (!found) return null;
  return Object.fromEntries(names.map((n, i) => [n, found[i + 1]]));
}
