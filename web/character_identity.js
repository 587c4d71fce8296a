// Character Identity — browser side. Served by ComfyUI at /extensions/<pack folder>/character_identity.js.
import { app } from "../../scripts/app.js";

const PREPARE_NODE = "CharIDPrepareReference";
const SWATCH = 14;

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

// A swatch in the title bar shows the padding colour the node will use, or a red cross when the
// text is not a colour (the server refuses such a prompt before it runs).
function drawBackgroundSwatch(node, ctx) {
  const widget = node.widgets?.find((w) => w.name === "background");
  if (!widget || node.flags?.collapsed) return;
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const x = node.size[0] - SWATCH - 8;
  const y = -titleHeight + (titleHeight - SWATCH) / 2;
  const color = cssColor(widget.value);
  ctx.save();
  ctx.fillStyle = color ?? "#00000000";
  ctx.strokeStyle = color ? "#888" : "#e33";
  ctx.lineWidth = 1.5;
  ctx.fillRect(x, y, SWATCH, SWATCH);
  ctx.strokeRect(x, y, SWATCH, SWATCH);
  if (!color) {
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x + SWATCH, y + SWATCH);
    ctx.moveTo(x + SWATCH, y);
    ctx.lineTo(x, y + SWATCH);
    ctx.stroke();
  }
  ctx.restore();
}

app.registerExtension({
  name: "CharacterIdentity.ui",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== PREPARE_NODE) return;
    const previous = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
      const result = previous?.call(this, ctx, ...rest);
      drawBackgroundSwatch(this, ctx);
      return result;
    };
  },
});

export { cssColor, CSS_COLOUR_NAMES };
