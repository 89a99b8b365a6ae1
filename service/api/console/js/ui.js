// Small DOM helpers shared by the views: elements, errors, drop zones, canvases.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name === "on") for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (["value", "checked", "disabled", "hidden", "multiple", "required", "selected", "readOnly"].includes(name)) element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// The API's message as it is, with its status and code.
export function errorText(error) {
  if (error && error.code !== undefined && error.status !== undefined) {
    const status = error.status ? `${error.status} ` : "";
    return `${error.message} (${status}${error.code})`;
  }
  return String((error && error.message) || error);
}

export function showError(error) {
  document.getElementById("error-text").textContent = errorText(error);
  document.getElementById("error").hidden = false;
}

export function clearError() {
  document.getElementById("error").hidden = true;
}

// Runs an action, showing its error in the banner; returns undefined on error.
export async function attempt(action) {
  clearError();
  try {
    return await action();
  } catch (error) {
    if (error && error.status === 401) return undefined; // back at the login form already
    showError(error);
    return undefined;
  }
}

export function number(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

export function table(headers, rows, numeric = []) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((title, i) => h("th", { class: numeric.includes(i) ? "num" : null }, title)))),
      h("tbody", {}, rows),
    ),
  );
}

export function cell(content, numeric = false) {
  return h("td", { class: numeric ? "num" : null }, content);
}

// Draws an image (a Blob or File) into a square canvas; a note when it does not decode.
export async function drawImage(canvas, blob) {
  const context = canvas.getContext("2d");
  const size = canvas.width;
  try {
    const bitmap = await createImageBitmap(blob);
    const scale = Math.min(size / bitmap.width, size / bitmap.height);
    const width = bitmap.width * scale;
    const height = bitmap.height * scale;
    context.imageSmoothingEnabled = scale < 1;
    context.drawImage(bitmap, (size - width) / 2, (size - height) / 2, width, height);
    bitmap.close();
  } catch {
    context.fillStyle = "#888";
    context.font = "11px sans-serif";
    context.fillText("no preview", 6, size / 2);
  }
}

export function thumbCanvas(size = 96) {
  return h("canvas", { class: "thumb-canvas", width: size, height: size });
}

// Every file of a drop, walking dropped folders: [{file, path}] with path "dir/sub/name".
async function dropped(dataTransfer) {
  // Entries must be taken before the first await: the DataTransfer empties after the event.
  const entries = [...dataTransfer.items]
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  if (!entries.length) return [...dataTransfer.files].map((file) => ({ file, path: file.name }));
  const found = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      found.push({ file, path: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  }
  for (const entry of entries) await walk(entry, "");
  return found;
}

function picked(input) {
  return [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
}

// A drop zone with file inputs; calls onFiles([{file, path}]) for a drop or a pick.
export function dropZone(label, onFiles, { folders = false, id = "files" } = {}) {
  const fileInput = h("input", { type: "file", id, multiple: true, accept: "image/*,*/*" });
  const folderInput = folders ? h("input", { type: "file", id: `${id}-folder`, webkitdirectory: true }) : null;
  const zone = h(
    "div",
    { class: "drop" },
    h("p", {}, label),
    h("div", { class: "row" },
      h("label", { for: id }, "Images", fileInput),
      folderInput && h("label", { for: `${id}-folder` }, "A folder (subject/images)", folderInput)),
  );
  const take = (files) => {
    const kept = files.filter(({ file }) => !file.name.startsWith("."));
    if (kept.length) onFiles(kept);
  };
  fileInput.addEventListener("change", () => {
    take(picked(fileInput));
    fileInput.value = "";
  });
  if (folderInput) {
    folderInput.addEventListener("change", () => {
      take(picked(folderInput));
      folderInput.value = "";
    });
  }
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    dropped(event.dataTransfer).then(take, (error) => attempt(() => Promise.reject(error)));
  });
  return zone;
}

export function downloadBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
