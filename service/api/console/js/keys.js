// API keys (admin): list, create (the key is shown once), revoke.

import * as api from "./api.js";
import { attempt, cell, errorText, h, table } from "./ui.js";

export async function keysView(ctx) {
  const list = h("div", {});
  try {
    const { keys } = await api.get("/v1/keys");
    const rows = keys.map((key) => h(
      "tr",
      { dataset: { keyId: String(key.key_id) } },
      cell(String(key.key_id), true),
      cell(key.scope),
      cell(key.name || h("span", { class: "muted" }, "—")),
      cell(key.created || ""),
      cell(h("button", {
        type: "button", class: "danger", text: "Revoke",
        on: {
          click: () => {
            if (!window.confirm(`Revoke key ${key.key_id}${key.name ? ` (${key.name})` : ""}? Clients using it are refused from now on.`)) return;
            attempt(async () => {
              await api.del(api.path("v1", "keys", key.key_id));
              ctx.rerender();
            });
          },
        },
      })),
    ));
    list.append(table(["id", "scope", "name", "created", ""], rows, [0]));
  } catch (error) {
    if (error.status === 401) throw error;
    list.append(h("p", { class: "error" }, `Listing keys: ${errorText(error)}`));
  }
  const scope = h("select", { id: "new-key-scope" }, h("option", { value: "client" }, "client"), h("option", { value: "admin" }, "admin"));
  const name = h("input", { id: "new-key-name", maxlength: 256, placeholder: "who uses it" });
  const shown = h("div", {});
  const form = h("form", { class: "inline card" }, h("label", {}, "Scope", scope), h("label", {}, "Name", name), h("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const created = await api.post("/v1/keys", { json: { scope: scope.value, name: name.value || null } });
      const field = h("input", { class: "key-once", id: "new-key", readOnly: true, value: created.key });
      const copy = h("button", {
        type: "button", class: "secondary", text: "Copy",
        on: { click: () => navigator.clipboard.writeText(created.key).catch(() => field.select()) },
      });
      shown.replaceChildren(h("div", { class: "card" },
        h("p", { class: "warn" }, `Key ${created.key_id} (${created.scope}). It is shown this once: copy it now.`),
        h("div", { class: "row" }, field, copy)));
      name.value = "";
    });
  });
  return h("section", {}, h("h1", {}, "API keys"), list, h("h2", {}, "Create a key"), form, shown);
}
