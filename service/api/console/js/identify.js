// The identify playground: drop probe images; for each, the decision, the candidates with
// their scores, and a bar placing the top score against the threshold.

import * as api from "./api.js";
import { cell, drawImage, dropZone, errorText, h, number, table, thumbCanvas } from "./ui.js";
import { noGallery } from "./subjects.js";

// A bar from `low` to 1 filled up to the score, with a mark at the threshold.
export function scoreBar(score, threshold, known) {
  const low = Math.min(0, score ?? 0, threshold ?? 0);
  const at = (value) => `${(100 * (Math.min(Math.max(value, low), 1) - low)) / (1 - low)}%`;
  const fill = h("div", { class: `fill${known ? " known" : ""}` });
  fill.style.width = score === null || score === undefined ? "0%" : at(score);
  const bar = h("div", { class: "scorebar", role: "img", "aria-label": `score ${number(score)} against threshold ${number(threshold)}` }, fill);
  if (threshold !== null && threshold !== undefined) {
    const mark = h("div", { class: "mark", title: `threshold ${number(threshold)}` });
    mark.style.left = at(threshold);
    bar.append(mark);
  }
  return h("div", {}, bar, h("div", { class: "scale" }, h("span", {}, number(low, 2)), h("span", {}, "1")));
}

function resultCard(file, result) {
  const canvas = thumbCanvas(96);
  drawImage(canvas, file);
  const known = result.decision === "known";
  const candidates = result.candidates.map((c) =>
    h("tr", {}, cell(c.subject_id), cell(number(c.score), true)),
  );
  return h(
    "div",
    { class: "card probe", dataset: { probe: file.name } },
    h("div", { class: "row" }, canvas, h("div", {},
      h("div", { class: `decision ${result.decision}` }, known ? `known: ${result.subject_id}` : "unknown"),
      h("div", { class: "muted" }, file.name),
      h("div", {}, `score ${number(result.score)} · threshold ${number(result.threshold)} · FPIR ${number(result.fpir, 6)}`))),
    scoreBar(result.score, result.threshold, known),
    candidates.length ? table(["candidate", "score"], candidates, [1]) : h("p", { class: "muted" }, "No candidates (empty gallery)."),
  );
}

function errorCard(file, error) {
  const canvas = thumbCanvas(96);
  drawImage(canvas, file);
  return h(
    "div",
    { class: "card probe", dataset: { probe: file.name } },
    h("div", { class: "row" }, canvas, h("div", {},
      h("div", { class: "decision unknown" }, "refused"),
      h("div", { class: "muted" }, file.name))),
    h("p", { class: "error reason" }, errorText(error)),
  );
}

export async function identifyView(ctx) {
  if (!ctx.gallery) return noGallery(ctx);
  const gallery = ctx.gallery;
  const topK = h("input", { id: "identify-top-k", type: "number", min: 1, max: 100, value: "5" });
  const fpir = h("input", { id: "identify-fpir", type: "number", step: "any", min: "0", max: "1", placeholder: "the gallery's" });
  const cards = h("div", { class: "probes", id: "identify-results" });

  async function identify(files) {
    cards.replaceChildren();
    for (const { file } of files) {
      if (!ctx.alive()) return;
      const form = new FormData();
      form.append("images", file, file.name);
      form.append("top_k", topK.value || "5");
      if (fpir.value !== "") form.append("fpir", fpir.value);
      try {
        const answer = await api.post(`${api.path("v1", "galleries", gallery)}/identify`, { form });
        cards.append(resultCard(file, answer.results[0]));
      } catch (error) {
        if (error.status === 401) return;
        cards.append(errorCard(file, error));
      }
    }
  }

  return h(
    "section",
    {},
    h("h1", {}, `Identify in ${gallery}`),
    h("form", { class: "inline", on: { submit: (event) => event.preventDefault() } },
      h("label", {}, "Candidates (top k)", topK),
      h("label", {}, "FPIR", fpir)),
    dropZone("Drop probe images here", identify, { id: "identify-files" }),
    cards,
  );
}
