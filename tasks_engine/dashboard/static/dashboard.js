// The dashboard's only script: render the page's JSON snapshot into the markup's data-* hooks, keep it
// live from /api/events (server-sent events), and post action forms to /api/ without reloading.
//   data-bind="a.b"      text of the snapshot's value      data-bind-if="a.b"   shown only when truthy
//   data-bind-state="p"  data-state attribute (for colour)  data-rows="path"     tbody re-rendered from its <template>
//   in a row: data-field, data-fmt, data-href / data-action ("{id}" placeholders), data-if, data-state-of, data-list
(function () {
  "use strict";
  const body = document.body;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const rendered = new Map(); // tbody -> JSON it shows: unchanged rows are not rebuilt (no flicker, clicks land)

  const get = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  const truthy = (v) => !(v == null || v === false || v === 0 || v === "" || (Array.isArray(v) && !v.length));
  const sub = (tpl, row) => tpl.replace(/\{([\w.]+)\}/g, (_, k) => encodeURIComponent(get(row, k) ?? ""));

  function age(seconds) {
    const s = Number(seconds);
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function fmt(v, kind) {
    if (kind === "health") return v ? "healthy" : "unhealthy";
    if (kind === "consumers") return v && v.length ? v.length + " (" + v.join(", ") + ")" : "nobody consumes";
    if (v == null || v === "") return "—";
    if (kind === "age") return age(v);
    if (kind === "time") { const d = new Date(v); return isNaN(d) ? String(v) : d.toLocaleString(); }
    if (kind === "list") return v.length ? v.join(", ") : "—";
    if (kind === "json") return typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v, null, 2);
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  const all = (node, sel) => [...(node.matches(sel) ? [node] : []), ...node.querySelectorAll(sel)];

  function fillRow(node, row) {
    all(node, "[data-field]").forEach((el) => { el.textContent = fmt(get(row, el.dataset.field), el.dataset.fmt); });
    all(node, "[data-href]").forEach((el) => el.setAttribute("href", sub(el.dataset.href, row)));
    all(node, "[data-action]").forEach((el) => el.setAttribute("action", sub(el.dataset.action, row)));
    all(node, "[data-if]").forEach((el) => { if (!truthy(get(row, el.dataset.if))) el.remove(); });
    all(node, "[data-state-of]").forEach((el) => { el.dataset.state = String(get(row, el.dataset.stateOf)); });
    all(node, "[data-list]").forEach((el) => renderInto(el, get(row, el.dataset.list) || [], false));
  }

  function renderInto(container, rows, isTable) {
    const tpl = container.querySelector(":scope > template");
    [...container.children].forEach((c) => { if (c !== tpl) c.remove(); });
    if (!rows.length && isTable) {
      const cols = tpl.content.firstElementChild.children.length;
      container.insertAdjacentHTML("beforeend", '<tr class="empty"><td></td></tr>');
      const td = container.lastElementChild.firstElementChild;
      td.colSpan = cols;
      td.textContent = container.dataset.empty || "Nothing here";
    }
    rows.forEach((row) => {
      const frag = tpl.content.cloneNode(true);
      [...frag.children].forEach((el) => fillRow(el, row));
      container.appendChild(frag);
    });
  }

  function chart(svg, series, key) {
    const w = 600, h = 140, pad = 16;
    const values = series.map((p) => Number(p[key]) || 0);
    const max = Math.max(1, ...values);
    const x = (i) => (values.length < 2 ? w : (i / (values.length - 1)) * w);
    const y = (v) => h - pad - (v / max) * (h - 2 * pad);
    const points = values.map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
    const last = values.length ? values[values.length - 1] : 0;
    svg.innerHTML =
      '<line class="axis" x1="0" y1="' + (h - pad) + '" x2="' + w + '" y2="' + (h - pad) + '"/>' +
      (values.length ? '<polygon class="area" points="0,' + (h - pad) + " " + points + " " + w + "," + (h - pad) + '"/>' +
        '<polyline class="line" points="' + points + '"/>' : "") +
      '<text x="4" y="12">max ' + max.toFixed(max < 10 ? 2 : 0) + '</text>' +
      '<text x="' + (w - 4) + '" y="12" text-anchor="end">now ' + last.toFixed(last < 10 ? 2 : 0) + "</text>" +
      (values.length < 2 ? '<text x="300" y="75" text-anchor="middle">collecting samples…</text>' : "");
  }

  function render(snap) {
    document.querySelectorAll("[data-bind]").forEach((el) => { el.textContent = fmt(get(snap, el.dataset.bind), el.dataset.fmt); });
    document.querySelectorAll("[data-bind-if]").forEach((el) => { el.hidden = !truthy(get(snap, el.dataset.bindIf)); });
    document.querySelectorAll("[data-bind-state]").forEach((el) => { el.dataset.state = String(get(snap, el.dataset.bindState)); });
    document.querySelectorAll("tbody[data-rows]").forEach((tb) => {
      const rows = get(snap, tb.dataset.rows);
      if (rows === undefined) return;
      const json = JSON.stringify(rows);
      if (rendered.get(tb) === json) return;
      rendered.set(tb, json);
      renderInto(tb, rows, true);
    });
    document.querySelectorAll("svg[data-chart]").forEach((svg) => chart(svg, snap.series || [], svg.dataset.chart));
  }

  function notice(text, bad) {
    const el = document.getElementById("notice");
    el.textContent = text;
    el.classList.toggle("bad", !!bad);
    el.hidden = false;
  }

  // Action forms: posted with fetch so the page stays and the next snapshot shows the effect.
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.matches("form[data-api]")) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const resp = await fetch(form.getAttribute("action"), {
        method: "POST", credentials: "same-origin", body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      });
      const answer = await resp.json().catch(() => ({ error: resp.status + " " + resp.statusText }));
      notice(answer.message || answer.error, !resp.ok);
      if (resp.ok && form.dataset.done) window.location.assign(form.dataset.done + "?notice=" + encodeURIComponent(answer.message));
    } catch (err) {
      notice("request failed: " + err, true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  const goto = document.getElementById("goto-id");
  if (goto) goto.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && goto.value.trim()) { ev.preventDefault(); window.location.assign("/tasks/" + encodeURIComponent(goto.value.trim())); } });

  render(JSON.parse(document.getElementById("snapshot").textContent));
  const live = document.getElementById("live");
  const problem = document.getElementById("problem");
  const source = new EventSource(body.dataset.events);
  source.onopen = () => { live.textContent = "live"; live.dataset.state = "on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.dataset.state = "off"; };
  source.onmessage = (ev) => { problem.hidden = true; render(JSON.parse(ev.data)); window.dashboardUpdates = (window.dashboardUpdates || 0) + 1; };
  source.addEventListener("problem", (ev) => { problem.textContent = JSON.parse(ev.data).error; problem.hidden = false; });
})();
