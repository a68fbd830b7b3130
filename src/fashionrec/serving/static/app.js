const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
async function api(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.statusText);
  return body;
}
function card(it, extra = "") {
  const img = it.image_url ? `<img loading="lazy" src="${esc(it.image_url)}" alt="${esc(it.name || it.id)}">` : `<div class="noimg">no image</div>`;
  return `<div class="card" data-id="${esc(it.id)}">${img}<div>${esc(it.name || "")}</div><div class="id">${esc(it.id)} ${esc(it.category || "")}</div>${extra}</div>`;
}
function bindCards(el) { el.querySelectorAll(".card").forEach((c) => c.onclick = () => showItem(c.dataset.id)); }
async function showItem(id) {
  $("item-msg").textContent = "";
  try {
    const it = await api(`/items/${encodeURIComponent(id)}`);
    $("item-focus").innerHTML = `${it.image_url ? `<img id="focus-img" src="${esc(it.image_url)}">` : ""}<div><b>${esc(it.name || it.id)}</b><br>${esc(it.id)}<br>${esc(it.category || "")} ${esc(it.type || "")} ${esc(it.colour || "")}${it.metadata && it.metadata.predicted_from_photo ? " (tags predicted from the photo)" : ""}</div>`;
    const sims = await api(`/items/${encodeURIComponent(id)}/similar?k=12`);
    $("similar").innerHTML = sims.map((s) => card(s, `<div>cos ${s.score.toFixed(3)}</div>`)).join("");
    bindCards($("similar"));
    $("item-panel").scrollIntoView({behavior: "smooth"});
  } catch (e) { $("item-msg").textContent = e.message; }
}
$("item-search").onclick = async () => {
  const q = $("item-q").value.trim();
  if (!q) return;
  try {
    const hits = await api(`/search/items?q=${encodeURIComponent(q)}&limit=12`);
    $("item-results").innerHTML = hits.length ? hits.map((h) => card(h)).join("") : "<i>no match</i>";
    bindCards($("item-results"));
    if (hits.length) showItem(hits[0].id);
  } catch (e) { $("item-msg").textContent = e.message; }
};
$("item-q").onkeydown = (e) => { if (e.key === "Enter") $("item-search").click(); };
async function showUser() {
  const u = $("user-select").value, m = $("model-select").value;
  $("user-msg").textContent = "";
  try {
    const h = await api(`/users/${encodeURIComponent(u)}?limit=12`);
    $("history").innerHTML = h.history.map((it) => card(it, `<div>${esc(it.date)}</div>`)).join("");
    const r = await api(`/users/${encodeURIComponent(u)}/recommendations?k=12&model=${encodeURIComponent(m)}`);
    $("recs").innerHTML = r.items.map((it) => card(it, it.because.length ? `<div class="because">because you bought ${esc(it.because.join(", "))}</div>` : `<div class="because">popular now</div>`)).join("");
    bindCards($("history")); bindCards($("recs"));
    const n = await api(`/users/${encodeURIComponent(u)}/new-in?k=12&model=${encodeURIComponent(m)}`);
    $("new-in").innerHTML = n.items.length ? n.items.map((it) => card(it, `<div class="because">not sold yet</div>`)).join("") : "<i>nothing new</i>";
    bindCards($("new-in"));
  } catch (e) { $("user-msg").textContent = e.message; }
}
$("user-go").onclick = showUser;
$("upload-go").onclick = async () => {
  const f = $("upload-file").files[0];
  $("upload-msg").textContent = "";
  if (!f) { $("upload-msg").textContent = "choose a photo first"; return; }
  const fd = new FormData(); fd.append("file", f);
  try {
    const r = await api("/search/image?k=12", {method: "POST", body: fd});
    $("tags").innerHTML = Object.entries(r.tags).map(([col, ts]) => `<div><b>${esc(col)}</b>: ${ts.map((t) => `<span>${esc(t.label)} ${(100 * t.probability).toFixed(0)}%</span>`).join("")}</div>`).join("");
    $("upload-similar").innerHTML = r.similar.map((s) => card(s)).join("");
    bindCards($("upload-similar"));
  } catch (e) { $("upload-msg").textContent = e.message; }
};
(async () => {
  try {
    const h = await api("/health");
    $("health").textContent = `${h.items.toLocaleString()} items · ${h.customers.toLocaleString()} customers · default model ${h.default_model} · index ${h.index}`;
    $("model-select").innerHTML = h.models.map((m) => `<option ${m === h.default_model ? "selected" : ""}>${esc(m)}</option>`).join("");
    const cs = await api("/customers?limit=50");
    $("user-select").innerHTML = cs.map((c) => `<option value="${esc(c.id)}">${esc(c.id.slice(0, 12))}… (${c.purchases})</option>`).join("");
    document.body.dataset.ready = "1";
    if (cs.length) await showUser();  // the page opens on a customer: purchases, recommendations, new in
  } catch (e) { $("health").textContent = "API error: " + e.message; }
})();
