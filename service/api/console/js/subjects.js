// Subjects of the current gallery: paged, searched by id prefix; each with its metadata,
// sample thumbnails (where images are kept), added and deleted samples.

import * as api from "./api.js";
import { attempt, cell, drawImage, h, table, thumbCanvas } from "./ui.js";

const PAGE_SIZE = 50;

export function noGallery(ctx) {
  return h(
    "section",
    {},
    h("p", { class: "muted" }, "No gallery selected. "),
    h("button", { type: "button", class: "secondary", on: { click: () => ctx.go("galleries") } }, "Go to galleries"),
  );
}

function subjectPath(gallery, subjectId, ...rest) {
  return api.path("v1", "galleries", gallery, "subjects", subjectId, ...rest);
}

export async function subjectsView(ctx) {
  if (!ctx.gallery) return noGallery(ctx);
  const gallery = ctx.gallery;
  const state = { prefix: "", cursors: [null] };
  const list = h("div", {});
  const search = h("input", { id: "subject-prefix", type: "search", placeholder: "id starts with…", maxlength: 256 });
  const pager = h("div", { class: "row" });

  async function load() {
    const cursor = state.cursors[state.cursors.length - 1];
    const page = await api.get(api.path("v1", "galleries", gallery, "subjects"), {
      params: { limit: PAGE_SIZE, cursor, prefix: state.prefix },
    });
    if (!ctx.alive()) return;
    const rows = page.subjects.map((subject) => subjectRow(ctx, gallery, subject, load));
    list.replaceChildren(
      page.subjects.length
        ? table(["subject", "samples", "metadata", "updated", ""], rows, [1])
        : h("p", { class: "muted" }, state.prefix ? `No subject id starts with "${state.prefix}".` : "No subjects yet."),
    );
    const back = h("button", {
      type: "button", class: "secondary", text: "Previous page", disabled: state.cursors.length < 2,
      on: { click: () => { state.cursors.pop(); attempt(load); } },
    });
    const next = h("button", {
      type: "button", class: "secondary", text: "Next page", disabled: !page.next_cursor,
      on: { click: () => { state.cursors.push(page.next_cursor); attempt(load); } },
    });
    pager.replaceChildren(back, h("span", { class: "muted" }, `page ${state.cursors.length}`), next);
  }

  const searchForm = h("form", { class: "inline" }, h("label", {}, "Search by id prefix", search), h("button", { type: "submit" }, "Search"));
  searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.prefix = search.value;
    state.cursors = [null];
    attempt(load);
  });
  const newId = h("input", { id: "new-subject-id", required: true, maxlength: 256 });
  const createForm = h("form", { class: "inline" }, h("label", {}, "New subject id", newId), h("button", { type: "submit" }, "Add subject"));
  createForm.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      await api.put(subjectPath(gallery, newId.value));
      newId.value = "";
      await load();
    });
  });
  await load();
  return h("section", {}, h("h1", {}, `Subjects of ${gallery}`), h("div", { class: "row" }, searchForm, createForm), list, pager);
}

function subjectRow(ctx, gallery, subject, reload) {
  const detail = h("tr", { class: "subject-detail", hidden: true }, h("td", { colspan: 5 }));
  const toggle = h("button", {
    type: "button", class: "link", text: `▸ ${subject.subject_id}`,
    on: {
      click: () => {
        detail.hidden = !detail.hidden;
        toggle.textContent = `${detail.hidden ? "▸" : "▾"} ${subject.subject_id}`;
        if (!detail.hidden) attempt(() => showDetail(ctx, gallery, subject.subject_id, detail.firstChild, reload));
      },
    },
  });
  const metadata = JSON.stringify(subject.metadata);
  const row = h(
    "tr",
    { dataset: { subject: subject.subject_id } },
    cell(toggle),
    cell(String(subject.sample_count), true),
    cell(h("code", {}, metadata.length > 60 ? `${metadata.slice(0, 60)}…` : metadata)),
    cell(h("span", { class: "muted" }, subject.updated.replace("T", " ").slice(0, 19))),
    cell(h("button", {
      type: "button", class: "danger", text: "Delete",
      on: {
        click: () => {
          if (!window.confirm(`Delete subject "${subject.subject_id}" and its ${subject.sample_count} samples?`)) return;
          attempt(async () => {
            await api.del(subjectPath(gallery, subject.subject_id));
            await reload();
          });
        },
      },
    })),
  );
  return [row, detail];
}

async function showDetail(ctx, gallery, subjectId, target, reload, note = "") {
  const subject = await api.get(subjectPath(gallery, subjectId));
  const metadata = h("textarea", { "aria-label": "metadata (JSON)" });
  metadata.value = JSON.stringify(subject.metadata, null, 2);
  const save = h("button", {
    type: "button", text: "Save metadata",
    on: {
      click: () => attempt(async () => {
        let parsed;
        try {
          parsed = JSON.parse(metadata.value);
        } catch (error) {
          throw new Error(`metadata is not JSON: ${error.message}`);
        }
        await api.put(subjectPath(gallery, subjectId), { json: { metadata: parsed } });
        await reload();
      }),
    },
  });
  const thumbs = h("div", { class: "thumbs" });
  for (const sample of subject.samples) {
    const canvas = thumbCanvas(72);
    if (sample.has_image) {
      api.get(subjectPath(gallery, subjectId, "samples", sample.sample_id, "image"), { raw: true })
        .then((response) => response.blob())
        .then((blob) => drawImage(canvas, blob))
        .catch(() => drawImage(canvas, new Blob([])));
    } else {
      drawImage(canvas, new Blob([]));
    }
    thumbs.append(h(
      "div",
      { class: "thumb", title: `${sample.source}, model ${sample.model}, sha256 ${sample.content_sha256}` },
      canvas,
      h("span", {}, `#${sample.sample_id} ${sample.source}`),
      h("button", {
        type: "button", class: "secondary", text: "Delete",
        on: {
          click: () => {
            if (!window.confirm(`Delete sample ${sample.sample_id}?`)) return;
            attempt(async () => {
              await api.del(subjectPath(gallery, subjectId, "samples", sample.sample_id));
              await showDetail(ctx, gallery, subjectId, target, reload);
            });
          },
        },
      }),
    ));
  }
  const add = h("input", { type: "file", multiple: true, accept: "image/*" });
  const outcome = h("p", { class: "muted" }, note);
  add.addEventListener("change", () => attempt(async () => {
    const form = new FormData();
    for (const file of add.files) form.append("images", file, file.name);
    add.value = "";
    const result = await api.post(subjectPath(gallery, subjectId, "samples"), { form });
    const rejected = result.samples.filter((s) => s.status === "rejected");
    const message = `${result.samples.length - rejected.length} enrolled` +
      rejected.map((s) => `; rejected: ${s.reason}`).join("");
    await showDetail(ctx, gallery, subjectId, target, reload, message);
  }));
  target.replaceChildren(
    h("h3", {}, "Samples"),
    subject.samples.length ? thumbs : h("p", { class: "muted" }, "No samples."),
    h("label", { class: "row" }, "Add images ", add),
    outcome,
    h("h3", {}, "Metadata"),
    metadata,
    h("div", { class: "row" }, save),
  );
}
