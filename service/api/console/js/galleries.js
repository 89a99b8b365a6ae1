// Galleries: list with counts, model, FPIR, threshold and its upper FPIR bound; create,
// delete, export and import (admin).

import * as api from "./api.js";
import { attempt, cell, downloadBlob, errorText, h, number, table } from "./ui.js";

// The threshold for the gallery's FPIR and its fpir_upper, from the gallery's calibration.
async function operatingPoint(gallery) {
  try {
    const calibration = await api.get(`${api.path("v1", "galleries", gallery.name)}/calibration`);
    const point = (calibration.thresholds || []).find((t) => Math.abs(t.fpir - gallery.fpir) < 1e-12);
    return { point: point || null, error: null };
  } catch (error) {
    if (error.status === 401) throw error;
    return { point: null, error };
  }
}

export async function galleriesView(ctx) {
  const galleries = await ctx.refreshGalleries();
  const points = await Promise.all(galleries.map(operatingPoint));
  const rows = galleries.map((gallery, i) => {
    const { point, error } = points[i];
    const open = h("button", {
      type: "button",
      class: "secondary",
      text: "Subjects",
      on: { click: () => { ctx.setGallery(gallery.name); ctx.go("subjects"); } },
    });
    const exportButton = h("button", {
      type: "button",
      class: "secondary admin-only",
      text: "Export",
      on: {
        click: () => attempt(async () => {
          const response = await api.get(`${api.path("v1", "galleries", gallery.name)}/export`, { raw: true });
          downloadBlob(await response.blob(), `${gallery.name}.tar`);
        }),
      },
    });
    const remove = h("button", {
      type: "button",
      class: "danger admin-only",
      text: "Delete",
      on: {
        click: () => {
          const question = `Delete gallery "${gallery.name}" with its ${gallery.subject_count} subjects and ${gallery.sample_count} samples? This cannot be undone.`;
          if (!window.confirm(question)) return;
          attempt(async () => {
            await api.del(api.path("v1", "galleries", gallery.name));
            ctx.rerender();
          });
        },
      },
    });
    return h(
      "tr",
      { dataset: { gallery: gallery.name } },
      cell(h("strong", {}, gallery.name)),
      cell(gallery.model),
      cell(number(gallery.fpir, 6), true),
      cell(point ? number(point.threshold) : h("span", { class: "muted", title: error ? errorText(error) : "" }, "—"), true),
      cell(point && point.fpir_upper !== undefined ? number(point.fpir_upper, 6) : "—", true),
      cell(String(gallery.subject_count), true),
      cell(String(gallery.sample_count), true),
      cell(h("span", { class: "hide-narrow" }, `${gallery.scoring}${gallery.keep_images ? ", keeps images" : ""}`)),
      cell(h("span", { class: "row" }, open, exportButton, remove)),
    );
  });
  const failed = points.find((p) => p.error);
  return h(
    "section",
    {},
    h("h1", {}, "Galleries"),
    galleries.length
      ? table(["name", "model", "FPIR", "threshold", "fpir_upper", "subjects", "samples", "scoring", ""], rows, [2, 3, 4, 5, 6])
      : h("p", { class: "muted" }, "No gallery yet."),
    failed && h("p", { class: "muted" }, `Thresholds are read from the gallery calibration API, which answered: ${errorText(failed.error)}`),
    await createForm(ctx),
    importForm(ctx),
  );
}

async function createForm(ctx) {
  let models = [];
  try {
    models = (await api.get("/v1/models")).models;
  } catch (error) {
    if (error.status === 401) throw error;
  }
  const name = h("input", { id: "new-gallery-name", name: "name", required: true, maxlength: 256 });
  const model = h(
    "select",
    { id: "new-gallery-model", name: "model" },
    h("option", { value: "" }, "(the default model)"),
    models.map((m) => h("option", { value: m.model }, `${m.model}${m.default ? " (default)" : ""}`)),
  );
  const fpir = h("input", { id: "new-gallery-fpir", name: "fpir", type: "number", step: "any", min: "0", max: "1", placeholder: "default" });
  const scoring = h("select", { id: "new-gallery-scoring" }, h("option", { value: "max" }, "max over samples"), h("option", { value: "mean" }, "mean template"));
  const keep = h("input", { id: "new-gallery-keep", type: "checkbox", checked: true });
  const form = h(
    "form",
    { class: "inline card admin-only", id: "create-gallery" },
    h("label", {}, "Name", name),
    h("label", {}, "Model", model),
    h("label", {}, "FPIR", fpir),
    h("label", {}, "Scoring", scoring),
    h("label", {}, "Keep images", keep),
    h("button", { type: "submit" }, "Create gallery"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { name: name.value, scoring: scoring.value, keep_images: keep.checked };
    if (model.value) body.model = model.value;
    if (fpir.value !== "") body.fpir = Number(fpir.value);
    attempt(async () => {
      await api.post("/v1/galleries", { json: body });
      ctx.setGallery(body.name);
      ctx.rerender();
    });
  });
  return h("div", {}, h("h2", { class: "admin-only" }, "Create a gallery"), form);
}

function importForm(ctx) {
  const file = h("input", { id: "import-archive", type: "file", accept: ".tar,application/x-tar", required: true });
  const name = h("input", { id: "import-name", placeholder: "the archive's name" });
  const form = h(
    "form",
    { class: "inline card admin-only" },
    h("label", {}, "Archive", file),
    h("label", {}, "As gallery", name),
    h("button", { type: "submit" }, "Import"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!file.files.length) return;
    const data = new FormData();
    data.append("archive", file.files[0]);
    attempt(async () => {
      const created = await api.post("/v1/galleries/import", { form: data, params: { name: name.value } });
      ctx.setGallery(created.name);
      ctx.rerender();
    });
  });
  return h("div", {}, h("h2", { class: "admin-only" }, "Import a gallery"), form);
}
