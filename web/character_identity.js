// Character Identity — browser side. Served by ComfyUI at /extensions/<pack folder>/character_identity.js.
import { app } from "../../scripts/app.js";

const PREPARE_NODE = "CharIDPrepareReference";
const SWATCH = 14;

// The browser's own CSS parser decides what a valid colour is; the server accepts the same
// #RRGGBB and CSS names through PIL.ImageColor.
function cssColor(text) {
  const probe = new Option().style;
  probe.color = String(text ?? "").trim();
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

export { cssColor };
