// The console's shell: login, navigation, the current gallery, and the views.

import * as api from "./api.js";
import { clearError, errorText, h, showError } from "./ui.js";
import { calibrationView } from "./calibration.js";
import { enrolView } from "./enrol.js";
import { galleriesView } from "./galleries.js";
import { identifyView } from "./identify.js";
import { keysView } from "./keys.js";
import { modelsView } from "./models.js";
import { subjectsView } from "./subjects.js";

const VIEWS = {
  galleries: galleriesView,
  subjects: subjectsView,
  enrol: enrolView,
  identify: identifyView,
  calibration: calibrationView,
  models: modelsView,
  keys: keysView,
};
const GALLERY_ITEM = "opengallery.gallery";

const context = {
  scope: null,
  galleries: [],
  renders: 0,
  get admin() {
    return this.scope === "admin";
  },
  get gallery() {
    return sessionStorage.getItem(GALLERY_ITEM);
  },
  setGallery(name) {
    if (name) sessionStorage.setItem(GALLERY_ITEM, name);
    else sessionStorage.removeItem(GALLERY_ITEM);
    fillGallerySelect();
  },
  async refreshGalleries() {
    const body = await api.get("/v1/galleries");
    this.galleries = body.galleries;
    if (!this.galleries.some((g) => g.name === this.gallery)) {
      this.setGallery(this.galleries.length ? this.galleries[0].name : null);
    }
    fillGallerySelect();
    return this.galleries;
  },
  go(view) {
    if (window.location.hash === `#${view}`) render();
    else window.location.hash = view;
  },
};

const $ = (id) => document.getElementById(id);

function fillGallerySelect() {
  const select = $("gallery-select");
  select.replaceChildren(
    ...(context.galleries.length
      ? context.galleries.map((g) => h("option", { value: g.name, selected: g.name === context.gallery }, g.name))
      : [h("option", { value: "" }, "(no gallery)")]),
  );
}

function showLogin(message = "") {
  api.session.clear();
  context.scope = null;
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message;
  $("login-key").value = "";
  $("login-key").focus();
}

async function start() {
  context.scope = await api.keyScope();
  document.body.classList.toggle("scope-client", context.scope !== "admin");
  $("scope").textContent = `${context.scope} key`;
  $("login").hidden = true;
  $("app").hidden = false;
  await context.refreshGalleries();
  render();
}

async function logIn(event) {
  event.preventDefault();
  clearError();
  const key = $("login-key").value.trim();
  if (!key) return;
  $("login-submit").disabled = true;
  api.session.set(key);
  try {
    await api.get("/v1/galleries", { quiet401: true });
    await start();
  } catch (error) {
    showLogin(errorText(error));
  } finally {
    $("login-submit").disabled = false;
  }
}

function currentView() {
  const name = window.location.hash.replace(/^#/, "");
  if (name === "keys" && !context.admin) return "galleries";
  return VIEWS[name] ? name : "galleries";
}

async function render() {
  if (!context.scope) return;
  const name = currentView();
  const token = ++context.renders;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
  clearError();
  const view = $("view");
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const alive = () => token === context.renders && context.scope !== null;
  try {
    const content = await VIEWS[name]({ ...contextView(), alive });
    if (alive()) view.replaceChildren(content);
  } catch (error) {
    if (!alive() || error.status === 401) return;
    view.replaceChildren(h("p", { class: "error" }, errorText(error)));
  }
}

function contextView() {
  return {
    scope: context.scope,
    admin: context.admin,
    gallery: context.gallery,
    galleries: context.galleries,
    setGallery: (name) => context.setGallery(name),
    refreshGalleries: () => context.refreshGalleries(),
    go: (view) => context.go(view),
    rerender: render,
  };
}

function boot() {
  $("boot").hidden = true;
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", () => showLogin("Logged out."));
  $("error-close").addEventListener("click", clearError);
  $("gallery-select").addEventListener("change", (event) => {
    context.setGallery(event.target.value);
    render();
  });
  window.addEventListener("hashchange", render);
  // Nothing fails silently: an error no view caught still reaches the banner.
  window.addEventListener("error", (event) => showError(event.error || event.message));
  window.addEventListener("unhandledrejection", (event) => showError(event.reason));
  api.onUnauthorized((error) => showLogin(`The service refused the key: ${errorText(error)}`));
  if (api.session.key) {
    start().catch((error) => showLogin(errorText(error)));
  } else {
    showLogin();
  }
}

boot();
