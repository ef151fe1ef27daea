// melange2 dashboard: keeps the server-rendered pages current from the events stream
// (GET /api/v1/events) and follows a running package's log. Plain JavaScript; the pages
// read fine without it. Every value is inserted as text, never as HTML.
"use strict";
(function () {
  const TERMINAL = new Set(["success", "failed", "skipped", "cancelled", "partial"]);
  const ORDER = ["blocked", "pending", "running", "success", "failed", "skipped", "cancelled"];
  const body = document.body;
  const liveState = document.getElementById("live-state");

  function setClass(el, status) {
    for (const c of Array.from(el.classList)) if (c.startsWith("st-")) el.classList.remove(c);
    el.classList.add("st-" + status);
  }
  function setStatus(el, status) {
    if (!el) return;
    el.textContent = status;
    setClass(el, status);
  }
  function seconds(s) {
    if (s == null || isNaN(s)) return "";
    s = Math.max(0, s);
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.round(s) + " s";
    let m = Math.floor(s / 60), sec = Math.floor(s % 60);
    if (m < 60) return m + " min " + String(sec).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }
  function renderCounts(container, counts) {
    if (!container) return;
    const wrap = document.createElement("span");
    wrap.className = "counts";
    for (const s of ORDER) {
      if (!counts[s]) continue;
      const c = document.createElement("span");
      c.className = "count st-" + s;
      c.dataset.count = s;
      c.textContent = counts[s] + " " + s;
      wrap.appendChild(c);
    }
    container.replaceChildren(wrap);
  }
  function progress(counts) {
    let total = 0, done = 0;
    for (const [s, n] of Object.entries(counts)) {
      total += n;
      if (TERMINAL.has(s)) done += n;
    }
    return { total, done, percent: total ? (100 * done) / total : 100 };
  }
  function setBar(scope, p) {
    const bar = scope.querySelector(".bar");
    if (!bar) return;
    bar.setAttribute("aria-valuenow", p.done);
    bar.setAttribute("aria-valuemax", p.total);
    bar.querySelector(".bar-done").style.width = p.percent.toFixed(1) + "%";
  }

  // -- the events stream --------------------------------------------------------------
  const handlers = { package: [], build: [] };
  function listen(url) {
    const source = new EventSource(url);
    source.addEventListener("hello", () => { liveState.textContent = "live"; liveState.classList.add("on"); });
    source.addEventListener("error", () => { liveState.textContent = "reconnecting"; liveState.classList.remove("on"); });
    source.addEventListener("resync", () => { window.location.reload(); });
    for (const kind of ["package", "build"]) {
      source.addEventListener(kind, (e) => {
        const data = JSON.parse(e.data);
        for (const h of handlers[kind]) h(data);
      });
    }
    return source;
  }

  // -- builds -------------------------------------------------------------------------
  function buildsPage() {
    const table = document.getElementById("builds");
    const firstPage = !new URLSearchParams(window.location.search).get("cursor");
    let refreshing = null;
    function refresh() {
      if (refreshing) return;
      refreshing = setTimeout(async () => {
        refreshing = null;
        const html = await (await fetch(window.location.href)).text();
        const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("#builds tbody");
        if (fresh) table.tBodies[0].replaceWith(fresh);
      }, 300);
    }
    function update(d) {
      const row = table.querySelector(`tr[data-build="${CSS.escape(d.build_id)}"]`);
      if (!row) {
        if (firstPage && d.kind === "build" && d.previous === null) refresh();
        return;
      }
      const status = d.kind === "build" ? d.status : d.build_status;
      setStatus(row.querySelector('[data-field="status"]'), status);
      const p = progress(d.counts);
      row.querySelector('[data-field="done"]').textContent = p.done;
      row.querySelector('[data-field="total"]').textContent = p.total;
      setBar(row, p);
      renderCounts(row.querySelector('[data-field="counts"]'), d.counts);
    }
    handlers.package.push(update);
    handlers.build.push(update);
  }

  // -- a build ------------------------------------------------------------------------
  function buildPage() {
    const rows = new Map();
    for (const tr of document.querySelectorAll("#packages tr[data-pkg]")) rows.set(tr.dataset.pkg, tr);
    const marks = new Map();
    for (const el of document.querySelectorAll(".critical [data-pkg], svg [data-pkg]")) {
      if (!marks.has(el.dataset.pkg)) marks.set(el.dataset.pkg, []);
      marks.get(el.dataset.pkg).push(el);
    }
    function summary(counts) {
      const p = progress(counts);
      document.getElementById("done").textContent = p.done;
      document.getElementById("total").textContent = p.total;
      document.getElementById("percent").textContent = Math.round(p.percent);
      setBar(document.querySelector(".summary"), p);
      renderCounts(document.getElementById("counts"), counts);
    }
    handlers.package.push((d) => {
      const tr = rows.get(d.name);
      if (tr) {
        setClass(tr, d.status);
        tr.querySelector(".s").textContent = d.status;
        tr.querySelector(".b").textContent = d.backend;
        tr.querySelector(".r").textContent = d.status === "blocked" || d.status === "pending" ? d.reason : d.error;
        tr.querySelector(".a").textContent = d.attempt;
        tr.querySelector(".c").textContent = d.cached ? "cached" : "";
        if (d.started_at && d.finished_at) {
          tr.querySelector(".d").textContent = seconds((Date.parse(d.finished_at) - Date.parse(d.started_at)) / 1000);
        }
      }
      for (const el of marks.get(d.name) || []) setClass(el, d.status);
      summary(d.counts);
    });
    handlers.build.push((d) => {
      setStatus(document.getElementById("build-status"), d.status);
      summary(d.counts);
      if (TERMINAL.has(d.status)) {
        const form = document.getElementById("cancel-form");
        if (form) form.remove();
        document.getElementById("eta").textContent = "finished";
      }
    });
  }

  // -- a package ----------------------------------------------------------------------
  function packagePage() {
    const name = body.dataset.pkg;
    handlers.package.push((d) => {
      if (d.name !== name) return;
      setStatus(document.getElementById("pkg-status"), d.status);
      document.getElementById("pkg-backend").textContent = d.backend || "—";
      document.getElementById("pkg-reason").textContent = (d.status === "blocked" || d.status === "pending") && d.reason ? d.reason : "—";
      document.getElementById("pkg-error").textContent = d.error || "—";
    });
    handlers.build.push((d) => setStatus(document.getElementById("build-status"), d.status));
    const log = document.getElementById("log");
    const followEnd = document.getElementById("follow-end");
    if (log.dataset.follow) followLog(log, followEnd);
  }

  function followLog(log, followEnd) {
    const shown = document.getElementById("log-attempt");
    let attempt = shown ? shown.textContent : "";
    const source = new EventSource(log.dataset.follow);
    function append(text) {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.appendChild(document.createTextNode(text));
      if (followEnd.checked && atEnd) log.scrollTop = log.scrollHeight;
    }
    source.onmessage = (e) => append(e.data + "\n");
    source.addEventListener("attempt", (e) => {
      if (e.data !== attempt) {
        attempt = e.data;
        if (shown) shown.textContent = attempt;
        append("\n--- attempt " + attempt + " ---\n");
      }
    });
    source.addEventListener("end", (e) => {
      source.close();
      setStatus(document.getElementById("pkg-status"), e.data);
      log.removeAttribute("data-follow");
    });
    log.scrollTop = log.scrollHeight;
    return source;
  }

  const page = body.dataset.page;
  if (page === "builds") buildsPage();
  else if (page === "build") buildPage();
  else if (page === "package") packagePage();
  if (body.dataset.events && window.EventSource) listen(body.dataset.events);
})();
