// Character Identity — browser side. Served by ComfyUI at /extensions/<pack folder>/character_identity.js.
//
// What it shows works in both node renderers — the classic canvas and the Vue one ("Nodes 2.0"),
// which never calls onDrawForeground — because it uses node badges, which both draw:
// - Prepare Character Reference: a badge in the padding colour (a red cross when the text is not a
//   colour the server accepts);
// - every cloud node: the price estimate for the current widget values, before Run (on ComfyUI with
//   native price badges the node declares it and the frontend draws it; this badge is for older ones);
// - Settings → Character Identity: whether each provider's key is configured, and where from (never
//   the key).
// Everything degrades to nothing when the pack's server side is missing or older, or the frontend
// lacks badges: the page and other packs never break.

// The app object: the frontend's global where it offers one, else the module older ones serve.
async function comfyModule(name, path) {
  const offered = window.comfyAPI?.[name]?.[name];
  if (offered) return offered;
  try {
    return (await import(path))[name];
  } catch {
    return undefined;
  }
}

const app = await comfyModule("app", "../../scripts/app.js");
const api = await comfyModule("api", "../../scripts/api.js");

const PREPARE_NODE = "CharIDPrepareReference";
const STATUS_PATH = "/character_identity/status";

// The 148 CSS Color 4 names: with #RGB and #RRGGBB, exactly what the server accepts (a test
// compares this list with the server's). rgb(), hsl(), alpha and system colours are refused on
// both sides, so the swatch never shows a colour the server would reject.
const CSS_COLOUR_NAMES = new Set([
  "aliceblue", "antiquewhite", "aqua", "aquamarine", "azure", "beige", "bisque", "black", "blanchedalmond",
  "blue", "blueviolet", "brown", "burlywood", "cadetblue", "chartreuse", "chocolate", "coral",
  "cornflowerblue", "cornsilk", "crimson", "cyan", "darkblue", "darkcyan", "darkgoldenrod", "darkgray",
  "darkgreen", "darkgrey", "darkkhaki", "darkmagenta", "darkolivegreen", "darkorange", "darkorchid",
  "darkred", "darksalmon", "darkseagreen", "darkslateblue", "darkslategray", "darkslategrey",
  "darkturquoise", "darkviolet", "deeppink", "deepskyblue", "dimgray", "dimgrey", "dodgerblue", "firebrick",
  "floralwhite", "forestgreen", "fuchsia", "gainsboro", "ghostwhite", "gold", "goldenrod", "gray", "green",
  "greenyellow", "grey", "honeydew", "hotpink", "indianred", "indigo", "ivory", "khaki", "lavender",
  "lavenderblush", "lawngreen", "lemonchiffon", "lightblue", "lightcoral", "lightcyan",
  "lightgoldenrodyellow", "lightgray", "lightgreen", "lightgrey", "lightpink", "lightsalmon",
  "lightseagreen", "lightskyblue", "lightslategray", "lightslategrey", "lightsteelblue", "lightyellow",
  "lime", "limegreen", "linen", "magenta", "maroon", "mediumaquamarine", "mediumblue", "mediumorchid",
  "mediumpurple", "mediumseagreen", "mediumslateblue", "mediumspringgreen", "mediumturquoise",
  "mediumvioletred", "midnightblue", "mintcream", "mistyrose", "moccasin", "navajowhite", "navy", "oldlace",
  "olive", "olivedrab", "orange", "orangered", "orchid", "palegoldenrod", "palegreen", "paleturquoise",
  "palevioletred", "papayawhip", "peachpuff", "peru", "pink", "plum", "powderblue", "purple",
  "rebeccapurple", "red", "rosybrown", "royalblue", "saddlebrown", "salmon", "sandybrown", "seagreen",
  "seashell", "sienna", "silver", "skyblue", "slateblue", "slategray", "slategrey", "snow", "springgreen",
  "steelblue", "tan", "teal", "thistle", "tomato", "turquoise", "violet", "wheat", "white", "whitesmoke",
  "yellow", "yellowgreen"
]);
const HEX_COLOUR = /^#(?:[0-9a-f]{3}|[0-9a-f]{6})$/i;

// → a CSS colour the canvas can paint, or null when the server would refuse the text.
function cssColor(text) {
  const value = String(text ?? "").trim();
  if (!HEX_COLOUR.test(value) && !CSS_COLOUR_NAMES.has(value.toLowerCase())) return null;
  const probe = new Option().style;
  probe.color = value.toLowerCase();
  return probe.color || null;
}

// A badge in the padding colour the node will use, or a red cross when the text is not a colour (the
// server refuses such a prompt before it runs).
function swatchBadge(node) {
  const widget = node.widgets?.find((w) => w.name === "background");
  if (!widget) return null;
  const color = cssColor(widget.value);
  if (!color) return badge("✕ not a colour", "#ffffff", "#b3261e");
  return badge("background", readableOn(color), color);
}

// Black or white text, whichever reads better on `color` (an rgb() string from cssColor).
function readableOn(color) {
  const [r, g, b] = (color.match(/\d+(\.\d+)?/g) ?? [0, 0, 0]).map(Number);
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000000" : "#ffffff";
}

function badge(text, fgColor, bgColor) {
  const Badge = window.LGraphBadge;
  return Badge ? new Badge({ text, fgColor, bgColor }) : null;
}

// ---- what the server says: key status and prices --------------------------------------------

let status;                   // the server's answer, once fetched; null when it has none

async function fetchStatus() {
  try {
    const response = api?.fetchApi ? await api.fetchApi(STATUS_PATH) : await fetch(STATUS_PATH);
    status = response.ok ? await response.json() : null;
  } catch {
    status = null;
  }
  app?.canvas?.setDirty?.(true, true);
  return status;
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

// "≈ $0.21 per run" from a price rule and the node's widgets (null: nothing to say yet).
function costText(node, rule) {
  const images = Number(widgetValue(node, "num_images") ?? 1);
  if (rule.per_megapixel != null) {
    const preset = rule.image_size_presets?.[widgetValue(node, "image_size")];
    const [width, height] = preset ?? [Number(widgetValue(node, "width")), Number(widgetValue(node, "height"))];
    if (!(width > 0 && height > 0)) return null;
    const dollars = rule.per_megapixel * (width * height) / 1e6 * images;
    return `≈ $${dollars < 0.1 ? dollars.toFixed(3) : dollars.toFixed(2)} per run`;
  }
  if (rule.per_call != null) return `${rule.approximate ? "≈ " : ""}$${rule.per_call} per run`;
  return "price: see provider";
}

function costBadge(node) {
  const rule = status?.pricing?.[node.type ?? node.comfyClass];
  const text = rule && costText(node, rule);
  return text ? badge(text, "#ffffff", "#1f5f3a") : null;
}

// Settings → Character Identity: one read-only line per provider.
function keyStatusElement() {
  const box = document.createElement("div");
  box.className = "character-identity-key-status";
  box.style.cssText = "display:flex;flex-direction:column;gap:4px;text-align:right";
  box.textContent = "checking…";
  fetchStatus().then((answer) => {
    box.textContent = "";
    if (!answer?.keys) {
      box.textContent = "the pack's server side did not answer: restart ComfyUI after installing or updating the pack";
      return;
    }
    for (const key of answer.keys) {
      const line = document.createElement("div");
      line.dataset.provider = key.provider;
      line.textContent = key.source
        ? `${key.name}: configured (${key.source === "environment" ? `environment variable ${key.variable}` : "keys file"})`
        : `${key.name}: not set — set ${key.variable}, or add "${key.variable} = …" under [keys] in ` +
          (answer.keys_file ?? "the keys file (see the README)");
      box.appendChild(line);
    }
  });
  return box;
}

function addBadge(nodeType, make) {
  const created = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function (...args) {
    const result = created?.apply(this, args);
    // a badge is drawn from a function at every frame, so it follows the widgets as they change
    if (Array.isArray(this.badges)) this.badges.push(() => make(this) ?? badge("", "#0000", "#0000"));
    return result;
  };
}

app?.registerExtension({
  name: "CharacterIdentity.ui",
  settings: [
    {
      id: "CharacterIdentity.KeyStatus",
      category: ["Character Identity", "API keys", "Status"],
      name: "Cloud API keys (read only; keys never reach the browser)",
      type: () => keyStatusElement(),
      defaultValue: "",
    },
  ],
  async init() {
    await fetchStatus();              // before the node types register: they need the price rules
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === PREPARE_NODE) addBadge(nodeType, swatchBadge);
    // ComfyUI 0.9.1 and newer: the node declares the same estimate as a native price badge, which
    // the frontend draws; one price per node
    else if (status?.pricing?.[nodeData?.name] && !(nodeData.api_node && nodeData.price_badge)) addBadge(nodeType, costBadge);
  },
});

export { cssColor, CSS_COLOUR_NAMES };
