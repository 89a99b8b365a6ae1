// Models: the registered bundles with their manifest metrics; register one from the server's
// disk, migrate a gallery to another model and follow the job live (admin).

import * as api from "./api.js";
import { attempt, cell, errorText, h, number, table } from "./ui.js";

// Nested metrics as "a.b.c: value" lines.
function flatten(value, prefix = "", out = []) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, child] of Object.entries(value)) flatten(child, prefix ? `${prefix}.${key}` : key, out);
  } else if (Array.isArray(value)) {
    out.push([prefix, `${value.length} entries`]);
  } else {
    out.push([prefix, typeof value === "number" ? number(value) : String(value)]);
  }
  return out;
}

function metricsOf(model) {
  const lines = flatten(model.metrics || {});
  if (!lines.length) return h("span", { class: "muted" }, "none");
  return h("details", {}, h("summary", {}, `${lines.length} figures`),
    h("pre", {}, lines.map(([key, value]) => `${key}: ${value}`).join("\n")));
}

export async function modelsView(ctx) {
  const { models } = await api.get("/v1/models");
  const rows = models.map((m) => h(
    "tr",
    { dataset: { model: m.model } },
    cell(h("strong", {}, m.model)),
    cell(m.default ? "default" : ""),
    cell(String(m.embedding_dim), true),
    cell(String(m.calibration_size), true),
    cell(m.galleries.join(", ") || h("span", { class: "muted" }, "—")),
    cell(metricsOf(m)),
  ));
  return h(
    "section",
    {},
    h("h1", {}, "Models"),
    table(["model", "", "dim", "calibration", "galleries", "metrics"], rows, [2, 3]),
    registerForm(ctx),
    migrateForm(ctx, models),
  );
}

function registerForm(ctx) {
  const bundle = h("input", { id: "register-path", required: true, placeholder: "/srv/bundles/mel-2" });
  const form = h("form", { class: "inline card admin-only" }, h("label", {}, "Bundle directory on the server", bundle), h("button", { type: "submit" }, "Register"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      await api.post("/v1/models", { json: { path: bundle.value } });
      ctx.rerender();
    });
  });
  return h("div", {}, h("h2", { class: "admin-only" }, "Register a bundle"), form);
}

function migrateForm(ctx, models) {
  const gallery = h("select", { id: "migrate-gallery" }, ctx.galleries.map((g) => h("option", { value: g.name, selected: g.name === ctx.gallery }, `${g.name} (${g.model})`)));
  const model = h("select", { id: "migrate-model" }, models.map((m) => h("option", { value: m.model }, m.model)));
  const progress = h("progress", { id: "migrate-progress", max: 1, value: 0, hidden: true });
  const status = h("p", { id: "migrate-status", class: "muted" });
  const form = h("form", { class: "inline card admin-only" }, h("label", {}, "Gallery", gallery), h("label", {}, "To model", model), h("button", { type: "submit" }, "Migrate"));

  async function follow(jobId) {
    progress.hidden = false;
    for (;;) {
      if (!ctx.alive()) return;
      let job;
      try {
        job = await api.get(api.path("v1", "jobs", jobId));
      } catch (error) {
        status.textContent = errorText(error);
        status.className = "error";
        return;
      }
      progress.max = Math.max(1, job.progress.total);
      progress.value = job.progress.done;
      status.className = job.status === "failed" ? "error" : job.status === "succeeded" ? "ok" : "muted";
      status.textContent = `job ${job.job_id}: ${job.status}, ${job.progress.done} / ${job.progress.total} samples re-embedded (${job.from_model} → ${job.to_model})${job.error ? `: ${job.error}` : ""}`;
      if (job.status !== "running") {
        attempt(() => ctx.refreshGalleries());
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const accepted = await api.post(`${api.path("v1", "galleries", gallery.value)}/migrate`, { json: { model: model.value } });
      await follow(accepted.job_id);
    });
  });
  return h("div", {}, h("h2", { class: "admin-only" }, "Migrate a gallery"), form, progress, status);
}
