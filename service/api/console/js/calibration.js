// Calibration: the strangers' best scores against the gallery as a histogram, with the
// threshold for the gallery's FPIR drawn on it; the thresholds table; upload a calibration
// set of the deployment's own strangers, or go back to the model bundle's set.

import * as api from "./api.js";
import { attempt, cell, errorText, h, number, table } from "./ui.js";
import { noGallery } from "./subjects.js";

const BINS = 40;

export function drawHistogram(canvas, scores, threshold) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 260;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const values = threshold === null || threshold === undefined ? scores : [...scores, threshold];
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (high - low < 1e-6) {
    low -= 0.05;
    high += 0.05;
  }
  const counts = new Array(BINS).fill(0);
  for (const score of scores) {
    counts[Math.min(BINS - 1, Math.floor(((score - low) / (high - low)) * BINS))] += 1;
  }
  const most = Math.max(1, ...counts);
  const left = 40;
  const bottom = height - 24;
  const plotWidth = width - left - 10;
  const plotHeight = bottom - 10;
  g.fillStyle = "#7aa6e0";
  counts.forEach((count, i) => {
    const barHeight = (count / most) * plotHeight;
    g.fillRect(left + (i * plotWidth) / BINS + 1, bottom - barHeight, plotWidth / BINS - 2, barHeight);
  });
  g.fillStyle = "#5d6b78";
  g.font = "11px sans-serif";
  g.fillText(number(low, 2), left, height - 8);
  g.fillText(number(high, 2), width - 40, height - 8);
  g.fillText(String(most), 4, 18);
  g.fillText("0", 4, bottom);
  if (threshold !== null && threshold !== undefined) {
    const x = left + ((threshold - low) / (high - low)) * plotWidth;
    g.strokeStyle = "#b3261e";
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(x, 6);
    g.lineTo(x, bottom);
    g.stroke();
    g.fillStyle = "#b3261e";
    g.fillText(`threshold ${number(threshold)}`, Math.min(x + 4, width - 110), 16);
  }
}

export async function calibrationView(ctx) {
  if (!ctx.gallery) return noGallery(ctx);
  const gallery = ctx.gallery;
  const record = ctx.galleries.find((g) => g.name === gallery);
  const url = `${api.path("v1", "galleries", gallery)}/calibration`;
  const body = h("div", {});
  let calibration = null;
  try {
    calibration = await api.get(url, { params: { scores: "true" } });
  } catch (error) {
    if (error.status === 401) throw error;
    body.append(h("p", { class: "error" }, `The calibration API answered: ${errorText(error)}`));
  }
  if (calibration) {
    const point = (calibration.thresholds || []).find((t) => record && Math.abs(t.fpir - record.fpir) < 1e-12);
    body.append(
      h("p", {}, `Set: ${calibration.source === "gallery" ? "the gallery's own" : "the model bundle's"}, ${calibration.size} strangers; smallest FPIR it supports: ${number(calibration.min_fpir, 6)}.`),
    );
    if (Array.isArray(calibration.scores) && calibration.scores.length) {
      const canvas = h("canvas", { class: "histogram", id: "calibration-histogram" });
      body.append(h("h2", {}, "Strangers' best scores against this gallery"), canvas);
      requestAnimationFrame(() => drawHistogram(canvas, calibration.scores, point ? point.threshold : null));
    } else {
      body.append(h("p", { class: "muted" }, "The API gave no per-stranger scores (GET …/calibration?scores=true), so no histogram."));
    }
    const rows = (calibration.thresholds || []).map((t) =>
      h("tr", { class: point === t ? "ok" : null }, cell(number(t.fpir, 6), true), cell(number(t.threshold), true), cell(number(t.fpir_upper, 6), true)),
    );
    body.append(h("h2", {}, "Thresholds"), table(["FPIR", "threshold", "fpir_upper (95%)"], rows, [0, 1, 2]));
  }
  const files = h("input", { id: "calibration-files", type: "file", multiple: true, accept: "image/*" });
  const upload = h("form", { class: "inline card admin-only" }, h("label", {}, "Stranger images from this deployment", files), h("button", { type: "submit" }, "Add to the calibration set"));
  const note = h("p", { class: "muted" });
  upload.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!files.files.length) return;
    const form = new FormData();
    for (const file of files.files) form.append("images", file, file.name);
    attempt(async () => {
      const answer = await api.post(`${url}/samples`, { form });
      note.textContent = `The set now holds ${answer.size} strangers.`;
      ctx.rerender();
    });
  });
  const reset = h("button", {
    type: "button", class: "danger admin-only", text: "Back to the bundle's set",
    on: {
      click: () => {
        if (!window.confirm(`Drop ${gallery}'s own calibration set and use the model bundle's?`)) return;
        attempt(async () => {
          await api.del(url);
          ctx.rerender();
        });
      },
    },
  });
  return h("section", {}, h("h1", {}, `Calibration of ${gallery}`), body, h("h2", { class: "admin-only" }, "Upload a calibration set"), upload, note, h("div", { class: "row" }, reset));
}
