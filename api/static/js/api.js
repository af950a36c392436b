// Calls to the sparse-nas REST API, with the bearer token kept in localStorage.

const TOKEN_KEY = "sparse-nas.token";

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new CustomEvent("sparse-nas:token"));
}

/** An error answer of the API: its status, `detail` and located `errors` ({loc, msg, type}). */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = (body && body.detail) || (status ? `HTTP ${status}` : "request failed");
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
  }
}

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const token = getToken();
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

/** One JSON request; resolves to the decoded body (null for 204), rejects with ApiError. */
export async function api(path, { method = "GET", body, signal, headers: extra } = {}) {
  const init = { method, signal, headers: headers(extra) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { detail: `cannot reach the service (${err.message})` });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 300) };
    }
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("sparse-nas:unauthorized"));
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Download `path` as a file (with the token, which a plain link could not send). */
export async function downloadFrom(path, fallbackName) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, body);
  }
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  saveBlob(await response.blob(), match ? decodeURIComponent(match[1]) : fallbackName);
}

/** Offer `blob` to the user as a download called `filename`. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

let plotlyPromise = null;

/** Plotly, loaded on first use from the server (the plotly package's own bundle, no CDN). */
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/vendor/plotly.min.js";
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        plotlyPromise = null;
        reject(new Error("cannot load /vendor/plotly.min.js (is the plotly package installed on the server?)"));
      };
      document.head.appendChild(script);
    });
  }
  return plotlyPromise;
}
