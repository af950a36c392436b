// The dashboard's entry point: hash routing (#/jobs, #/jobs/<id>, #/jobs/<id>/trials/<n>) and the token box.

import { getToken, setToken } from "./api.js";
import { JobPage } from "./job.js";
import { JobsPage } from "./jobs.js";

const app = document.getElementById("app");
const banner = document.getElementById("global-banner");
let page = null;
let bannerTimer = null;
let askedForToken = false;

function showError(message) {
  banner.textContent = message;
  banner.hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => { banner.hidden = true; }, 8000);
}

function parseHash() {
  const path = location.hash.replace(/^#\/?/, "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "jobs" && parts[1]) {
    const trial = parts[2] === "trials" && /^\d+$/.test(parts[3] || "") ? Number(parts[3]) : null;
    return { name: "job", id: parts[1], trial };
  }
  return { name: "jobs" };
}

function route() {
  const target = parseHash();
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === "jobs");
  if (target.name === "job" && page instanceof JobPage && page.jobId === target.id) {
    page.showTrial(target.trial);
    return;
  }
  if (page) page.destroy();
  window.scrollTo(0, 0);
  if (target.name === "job") {
    page = new JobPage(app, target.id, { showError });
    document.title = "Job · sparse-nas";
    page.mount(target.trial);
  } else {
    page = new JobsPage(app, { showError });
    document.title = "Jobs · sparse-nas";
    page.mount();
  }
}

// --- the token box -------------------------------------------------------------------------------

const toggle = document.getElementById("token-toggle");
const popover = document.getElementById("token-popover");
const tokenInput = document.getElementById("token-input");

function renderToken() {
  const set = Boolean(getToken());
  document.getElementById("token-dot").classList.toggle("on", set);
  document.getElementById("token-label").textContent = set ? "Token set" : "API token";
}

function openTokenBox(open) {
  popover.hidden = !open;
  toggle.setAttribute("aria-expanded", String(open));
  if (open) {
    tokenInput.value = getToken();
    tokenInput.focus();
  }
}

toggle.addEventListener("click", () => openTokenBox(popover.hidden));
document.getElementById("token-clear").addEventListener("click", () => { setToken(""); openTokenBox(false); });
popover.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  openTokenBox(false);
});
document.addEventListener("click", (e) => {
  if (!popover.hidden && !e.target.closest(".token-box")) openTokenBox(false);
});
window.addEventListener("sparse-nas:token", () => {
  askedForToken = false;
  renderToken();
  banner.hidden = true;
  if (page) page.destroy();
  page = null;
  route();
});
window.addEventListener("sparse-nas:unauthorized", () => {
  banner.textContent = getToken()
    ? "The service refused the API token. Check it in the token box (top right)."
    : "This service needs an API token: enter it in the token box (top right).";
  banner.hidden = false;
  clearTimeout(bannerTimer);
  if (!askedForToken) {
    askedForToken = true;
    openTokenBox(true);
  }
});

window.addEventListener("hashchange", route);
renderToken();
route();
