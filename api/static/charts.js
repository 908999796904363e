// Charts: uPlot (vendored, see vendor/uplot/VERSION) with the pieces the dashboard shares.

import uPlot from "./vendor/uplot/uPlot.esm.js";

export { uPlot };

export const COLORS = {
  loss: "#4c78a8",
  train: "#f58518",
  val: "#d62728",
  ms: "#54a24b",
  mfu: "#9d5fb5",
  eval: "rgba(90, 90, 90, 0.35)",
  checkpoint: "#2e9e44",
  warning: "#d62728",
};

// For overlaid runs: distinct, and readable on white.
const PALETTE = [
  "#4c78a8",
  "#f58518",
  "#54a24b",
  "#d62728",
  "#9d5fb5",
  "#8c564b",
  "#e377c2",
  "#17becf",
  "#7f7f7f",
  "#bcbd22",
];
export const paletteColor = (i) => PALETTE[i % PALETTE.length];

// Vertical marks at iterations: evaluations (dashed), checkpoints (a triangle on the x axis,
// filled for a new best), warnings (a red line with the warning's code at the top).
export function markersPlugin(getMarks) {
  function draw(u) {
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const px = devicePixelRatio || 1;
    ctx.save();
    ctx.font = `${11 * px}px system-ui, sans-serif`;
    for (const m of getMarks()) {
      const x = Math.round(u.valToPos(m.iter, "x", true));
      if (!(x >= left && x <= left + width)) continue;
      if (m.kind === "checkpoint") {
        const s = 5 * px;
        ctx.beginPath();
        ctx.moveTo(x, top + height - 2 * s);
        ctx.lineTo(x - s, top + height);
        ctx.lineTo(x + s, top + height);
        ctx.closePath();
        ctx.fillStyle = ctx.strokeStyle = COLORS.checkpoint;
        ctx.lineWidth = px;
        if (m.best) ctx.fill();
        else ctx.stroke();
        continue;
      }
      ctx.strokeStyle = COLORS[m.kind];
      ctx.lineWidth = (m.kind === "warning" ? 2 : 1) * px;
      ctx.setLineDash(m.kind === "eval" ? [3 * px, 3 * px] : []);
      ctx.beginPath();
      ctx.moveTo(x + 0.5, top);
      ctx.lineTo(x + 0.5, top + height);
      ctx.stroke();
      if (m.kind === "warning") {
        ctx.fillStyle = COLORS.warning;
        ctx.fillText(`⚠ ${m.label}`, x + 4 * px, top + 12 * px);
      }
    }
    ctx.restore();
  }
  return { hooks: { draw } };
}

// A uPlot that fills its container's width and follows it when the window resizes.
export function makeChart(el, opts, data) {
  const width = () => Math.max(300, el.clientWidth);
  const chart = new uPlot({ width: width(), height: 280, ...opts }, data, el);
  const resize = new ResizeObserver(() => {
    if (Math.abs(chart.width - width()) > 1) chart.setSize({ width: width(), height: chart.height });
  });
  resize.observe(el);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => {
    resize.disconnect();
    destroy();
  };
  return chart;
}

// Thin columns in place to at most `max` rows once they pass it, keeping the first and the
// last row: every other older row goes, so the newest points keep their full detail longest.
export function thin(columns, max) {
  const keep = Math.floor(max / 2);
  while (columns[0].length > max) {
    const n = columns[0].length;
    for (const col of columns) {
      const recent = col.slice(n - keep);
      const older = col.slice(0, n - keep).filter((_, i) => i % 2 === 0);
      col.length = 0;
      col.push(...older, ...recent);
    }
  }
}

export const logToggle = (label, onChange) => {
  const box = document.createElement("label");
  box.className = "toggle";
  const input = document.createElement("input");
  input.type = "checkbox";
  input.addEventListener("change", () => onChange(input.checked));
  box.append(input, ` ${label}`);
  return box;
};
