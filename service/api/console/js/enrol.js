// Enrol images by drag and drop or file pickers: loose images into the subject named in the
// form, or a folder laid out as <subject>/<images>; one request per image, so that each
// image gets its own outcome (enrolled, or rejected with the service's reason).

import * as api from "./api.js";
import { attempt, cell, dropZone, errorText, h } from "./ui.js";
import { noGallery } from "./subjects.js";

// The subject of a file: its parent folder, or the subject typed in the form.
function subjectOf(path, typed) {
  const parts = path.split("/").filter(Boolean);
  return parts.length >= 2 ? parts[parts.length - 2] : typed;
}

export async function enrolView(ctx) {
  if (!ctx.gallery) return noGallery(ctx);
  const gallery = ctx.gallery;
  const subject = h("input", { id: "enrol-subject", maxlength: 256, placeholder: "for loose images" });
  const progress = h("progress", { id: "enrol-progress", max: 1, value: 0 });
  const summary = h("p", { id: "enrol-summary", class: "muted" });
  const rows = h("tbody", {});
  const results = h(
    "div",
    { class: "table-wrap" },
    h("table", { id: "enrol-results" }, h("thead", {}, h("tr", {}, ["image", "subject", "outcome", "reason"].map((t) => h("th", {}, t)))), rows),
  );
  let busy = false;

  async function enrol(files) {
    if (busy) return;
    const typed = subject.value.trim();
    const items = files.map(({ file, path }) => ({ file, path, subject: subjectOf(path, typed) }));
    const missing = items.filter((item) => !item.subject);
    if (missing.length) {
      summary.textContent = `Name a subject for loose images (${missing.length} without a folder), or drop a folder <subject>/<images>.`;
      summary.className = "error";
      return;
    }
    busy = true;
    rows.replaceChildren();
    progress.max = items.length;
    progress.value = 0;
    summary.className = "muted";
    const counts = { enrolled: 0, rejected: 0, error: 0 };
    const created = new Map(); // subject -> null, or the error that stopped its PUT
    for (const item of items) {
      if (!ctx.alive()) break;
      let status;
      let reason = "";
      try {
        if (!created.has(item.subject)) {
          try {
            await api.put(api.path("v1", "galleries", gallery, "subjects", item.subject));
            created.set(item.subject, null);
          } catch (error) {
            created.set(item.subject, error);
          }
        }
        const refused = created.get(item.subject);
        if (refused) throw refused;
        const form = new FormData();
        form.append("images", item.file, item.file.name);
        const answer = await api.post(`${api.path("v1", "galleries", gallery, "subjects", item.subject)}/samples`, { form });
        const outcome = answer.samples[0];
        status = outcome.status;
        reason = outcome.status === "rejected" ? outcome.reason : outcome.duplicate ? "already enrolled" : "";
      } catch (error) {
        if (error.status === 401) return;
        const outcome = error.details && error.details.samples && error.details.samples[0];
        status = outcome ? "rejected" : "error";
        reason = outcome ? outcome.reason : errorText(error);
      }
      counts[status] += 1;
      progress.value += 1;
      rows.append(h(
        "tr",
        { class: `status-${status}` },
        cell(item.path),
        cell(item.subject),
        cell(h("strong", { class: "outcome" }, status)),
        cell(h("span", { class: "reason" }, reason)),
      ));
      summary.textContent = `${progress.value} / ${items.length}: ${counts.enrolled} enrolled, ${counts.rejected} rejected, ${counts.error} failed`;
    }
    busy = false;
    attempt(() => ctx.refreshGalleries());
  }

  return h(
    "section",
    {},
    h("h1", {}, `Enrol into ${gallery}`),
    h("p", { class: "muted" }, "Drop images, or a folder whose subfolders are subjects (<subject>/<images>). A subject that does not exist is created."),
    h("form", { class: "inline", on: { submit: (event) => event.preventDefault() } }, h("label", {}, "Subject for loose images", subject)),
    dropZoneFor(enrol),
    progress,
    summary,
    results,
  );
}

function dropZoneFor(enrol) {
  return dropZone("Drop images or folders here", (files) => enrol(files), { folders: true, id: "enrol-files" });
}
