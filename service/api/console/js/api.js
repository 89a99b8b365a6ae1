// The service's HTTP API as the console uses it: the key from session storage in X-API-Key,
// every error as an ApiError carrying the API's own code and message.

const KEY_ITEM = "opengallery.key";

export class ApiError extends Error {
  constructor(status, code, message, details = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(KEY_ITEM);
  },
  set(key) {
    sessionStorage.setItem(KEY_ITEM, key);
  },
  clear() {
    sessionStorage.removeItem(KEY_ITEM);
  },
};

let unauthorized = () => {};

// Called with the ApiError of any 401: the key expired or was revoked.
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function path(...segments) {
  return "/" + segments.map((segment) => encodeURIComponent(String(segment))).join("/");
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && typeof error.message === "string") {
      return new ApiError(response.status, error.code, error.message, error.details || null);
    }
  } catch {
    // not the API's JSON error: described below from the status and the body
  }
  const body = text.trim().slice(0, 300) || "no body";
  return new ApiError(response.status, "http_error", `${response.status} ${response.statusText}: ${body}`);
}

// method, path; options: json (a body), form (FormData), params (query), raw (return the
// Response), quiet401 (do not log out on a 401: the login form checks a key with it).
export async function request(method, url, options = {}) {
  const target = new URL(url, window.location.origin);
  for (const [name, value] of Object.entries(options.params || {})) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  const headers = {};
  const key = session.key;
  if (key) headers["X-API-Key"] = key;
  let body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  } else if (options.form) {
    body = options.form;
  }
  let response;
  try {
    response = await fetch(target, { method, headers, body });
  } catch (error) {
    throw new ApiError(0, "connection_error", `cannot reach the service: ${error.message}`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !options.quiet401) unauthorized(error);
    throw error;
  }
  if (options.raw) return response;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (url, options) => request("GET", url, options);
export const post = (url, options) => request("POST", url, options);
export const put = (url, options) => request("PUT", url, options);
export const del = (url, options) => request("DELETE", url, options);

// "admin" or "client": what the key may do, asked of the API without changing anything.
export async function keyScope() {
  try {
    await get("/v1/keys");
    return "admin";
  } catch (error) {
    if (error.status === 403) return "client";
  }
  // Without GET /v1/keys: an admin-only POST with an invalid body is refused for its scope
  // (403) before the body is read, or for its body (422) when the key may create keys.
  try {
    await post("/v1/keys", { json: { scope: "(scope check)" } });
  } catch (error) {
    if (error.status === 403) return "client";
  }
  return "admin";
}
