// The field agent's phone page: open tasks of the stores assigned, nearest first; search or
// scan a serial number; the device card with its state, signal, last announcement, faults and
// timeline; remote diagnostics, a test announcement and a reboot with their results; starting
// and closing a task (it closes once the system has verified the device healthy).
// Installing, swapping and taking back devices are install.js's.
// The address holds the open card (#device=ID, #task=N), so a link can be shared or reloaded.
"use strict";

(() => {
  const { el, fill, t, api, time } = HD;
  const $ = (id) => document.getElementById(id);
  let tasks = [];
  let here = null; // {lat, lon} when the phone tells us
  let current = null; // {device, task}

  const fail = (e) => { if (e.status !== 401) $("error").textContent = HD.errorText(e); };

  function distanceKm(a, lat, lon) {
    const rad = Math.PI / 180;
    const h = Math.sin(((lat - a.lat) * rad) / 2) ** 2
      + Math.cos(a.lat * rad) * Math.cos(lat * rad) * Math.sin(((lon - a.lon) * rad) / 2) ** 2;
    return 12742 * Math.asin(Math.sqrt(h));
  }
  function distanceText(km) {
    return km < 1 ? `${Math.round(km * 1000)} ${t("m")}` : `${km.toFixed(1)} ${t("km")}`;
  }

  async function loadTasks() {
    tasks = await api("/api/v1/tasks?open_only=true&limit=200");
    renderTasks();
  }
  function renderTasks() {
    const located = here !== null;
    const list = tasks.map((task) => ({ task, km: located && task.install_lat !== null ? distanceKm(here, task.install_lat, task.install_lon) : null }));
    list.sort((a, b) => (a.km === null) - (b.km === null) || (a.km ?? 0) - (b.km ?? 0) || b.task.opened_at.localeCompare(a.task.opened_at));
    $("tasks-title").textContent = t(located ? "my_tasks" : "my_tasks_newest");
    fill($("tasks"), list.length ? list.map(({ task, km }) => el("li", { class: "link", "data-task": task.task_id, onclick: () => { location.hash = `task=${task.task_id}`; } },
      el("div", { class: "row" }, el("strong", {}, t(`kind_${task.kind}`)), el("span", { class: "badge" }, t(`ts_${task.status}`)),
        el("span", { class: "grow" }), km !== null ? el("span", { class: "muted" }, distanceText(km)) : null),
      el("div", {}, task.serial || task.device_id, " · ", HD.lang === "zh" ? task.action_zh : task.action_en),
      task.install_address ? el("div", { class: "muted" }, task.install_address) : null,
    )) : el("li", { class: "muted" }, t("none")));
  }

  function signalBars(rssi) {
    if (rssi === null || rssi === undefined) return "-";
    const bars = rssi >= -70 ? 4 : rssi >= -85 ? 3 : rssi >= -100 ? 2 : rssi >= -110 ? 1 : 0;
    return el("span", { class: "signal" }, "▮".repeat(bars) + "▯".repeat(4 - bars), ` ${rssi} dBm`);
  }

  async function openDevice(deviceId, task) {
    $("command-result").classList.add("hidden");
    $("device-card").classList.remove("hidden");
    fill($("device-title"), deviceId);
    fill($("device-body"), t("loading"));
    let device, timeline, announcements;
    try {
      const id = encodeURIComponent(deviceId);
      [device, timeline, announcements] = await Promise.all([
        api(`/api/v1/devices/${id}`),
        api(`/api/v1/devices/${id}/timeline?start=${encodeURIComponent(new Date(Date.now() - 7 * 86400e3).toISOString())}&limit=50`),
        api(`/api/v1/devices/${id}/announcements?limit=1`),
      ]);
    } catch (e) {
      fill($("device-body"), el("p", { class: "error", id: "device-error" }, HD.errorText(e)));
      $("device-actions").classList.add("hidden");
      fill($("task-panel")); fill($("faults")); fill($("timeline"));
      return;
    }
    current = { device, task, site: null };
    if (task) current.site = await api(`/api/v1/tasks/${task.task_id}/site`).catch(() => null);
    $("device-actions").classList.remove("hidden");
    const life = await api(`/api/v1/lifecycle/devices/${encodeURIComponent(deviceId)}`).catch(() => null);
    const may = new Set(life ? life.allowed : []);
    $("swap-device").classList.toggle("hidden", !may.has("swap_out"));
    $("return-device").classList.toggle("hidden", !may.has("return"));
    $("life-actions").classList.toggle("hidden", !may.has("swap_out") && !may.has("return"));
    fill($("device-title"), device.serial || device.device_id);
    const last = announcements[0];
    const health = device.last_health;
    fill($("device-body"), el("dl", { class: "kv" },
      el("dt", {}, t("device")), el("dd", {}, device.device_id),
      el("dt", {}, t("state")), el("dd", { id: "device-state" }, el("span", { class: `badge ${device.online ? "green" : "red"}` }, device.online ? t("online") : t("offline")), " ",
        HD.lang === "zh" ? device.state_zh || "-" : device.state || "-"),
      el("dt", {}, t("signal")), el("dd", {}, signalBars(health ? health.rssi_dbm : null)),
      el("dt", {}, t("firmware")), el("dd", {}, device.firmware || "-"),
      el("dt", {}, t("last_seen")), el("dd", {}, time(device.last_seen)),
      el("dt", {}, t("last_announcement")), el("dd", {}, last ? `${time(last.received_at)} ${HD.yuan(last.amount_fen)} ${t(`st_${last.status}`)}` : "-"),
      device.install_address ? [el("dt", {}, t("address")), el("dd", {}, device.install_address)] : null,
      device.clock ? [el("dt", {}, t("clock")), el("dd", { id: "device-clock" }, HD.clockText(device.clock))] : null));
    const faults = timeline.entries.filter((e) => (e.kind === "state" && ["faulty", "suspected_lost", "relocated", "offline"].includes(e.detail.state)) || e.kind === "task");
    fill($("faults"), faults.length ? faults.slice(0, 10).map((e) => el("li", {}, el("span", { class: "muted" }, time(e.at)), " ", e.summary)) : el("li", { class: "muted" }, t("none")));
    fill($("timeline"), timeline.entries.slice(0, 30).map((e) => el("li", {}, el("span", { class: "muted" }, time(e.at)), " ", e.kind, " · ", e.summary)));
    renderTaskPanel();
  }

  function siteBlock(site) {
    // Whose device it is and where it was installed: the phone masked, the clear one fetched
    // (and audited) only when the agent taps to call.
    if (!site) return null;
    const call = site.can_call ? el("button", { class: "small", id: "call", onclick: async () => {
      try { const { phone } = await api(`/api/v1/tasks/${site.task_id}/call`, { method: "POST" }); location.href = `tel:${phone}`; } catch (e) { fail(e); }
    } }, t("call")) : null;
    return el("dl", { class: "kv", id: "site" },
      el("dt", {}, t("merchant")), el("dd", { id: "site-merchant" }, site.merchant_name || "-"),
      el("dt", {}, t("contact")), el("dd", { id: "site-phone" }, `${site.contact_name || ""} ${site.phone || "-"} `, call),
      site.map_url ? [el("dt", {}, t("map")), el("dd", {}, el("a", { href: site.map_url, target: "_blank", rel: "noopener", id: "site-map" }, site.install_address || t("map")))] : null);
  }

  function notesBlock(site) {
    if (!site) return [];
    const text = el("textarea", { id: "note-text", rows: 2, maxlength: 1000, style: "width:100%" });
    const add = el("button", { class: "small", id: "add-note", onclick: async () => {
      if (!text.value.trim()) return;
      try { current.site = await api(`/api/v1/tasks/${site.task_id}/notes`, { method: "POST", body: { text: text.value } }); renderTaskPanel(); } catch (e) { fail(e); }
    } }, t("add_note"));
    return [el("h3", {}, t("notes")),
      el("ul", { class: "list", id: "notes" }, site.notes.length ? site.notes.map((n) => el("li", {}, el("span", { class: "muted" }, `${time(n.at)} ${n.login}`), " ", n.text)) : el("li", { class: "muted" }, t("none"))),
      text, add];
  }

  function cancelBlock(task) {
    const reason = el("select", { id: "cancel-reason" }, ["false_alarm", "duplicate", "merchant_closed", "other"].map((r) => el("option", { value: r }, t(`cr_${r}`))));
    return el("div", { class: "row" }, el("label", { for: "cancel-reason" }, t("cancel_reason")), reason,
      el("button", { class: "small warn", id: "cancel-task", onclick: () => taskAction("cancel", { reason: reason.value, note: ($("close-note") || {}).value || "" }) }, t("cancel_task")));
  }

  function renderTaskPanel() {
    const task = current && current.task;
    if (!task) { fill($("task-panel")); return; }
    const note = el("textarea", { id: "close-note", rows: 2, maxlength: 500, style: "width:100%" });
    const due = task.due_at ? el("p", { class: task.escalated_at ? "error" : "muted", id: "task-due" }, `${t("due")} ${time(task.due_at)}${task.escalated_at ? ` · ${t("escalated")}` : ""}`) : null;
    const parts = [el("h3", {}, `${t("task")} #${task.task_id} · ${t(`kind_${task.kind}`)} · `, el("span", { class: "badge", id: "task-status" }, task.cancel_reason ? t("cancelled") : t(`ts_${task.status}`))),
      el("p", {}, HD.lang === "zh" ? task.action_zh : task.action_en), due, siteBlock(current.site)];
    if (task.status === "open") parts.push(el("button", { id: "start-task", onclick: () => taskAction("start") }, t("start_work")));
    if (task.status === "open" || task.status === "in_progress") {
      parts.push(el("label", { for: "close-note" }, t("close_note")), note,
        el("button", { class: "primary", id: "close-task", onclick: () => taskAction("close", { note: note.value }) }, t("close_task")));
    }
    if (task.status === "verifying") parts.push(el("p", { class: "ok", id: "verifying" }, t("verifying_note")));
    if (task.status !== "closed") parts.push(cancelBlock(task));
    parts.push(...notesBlock(current.site));
    fill($("task-panel"), parts);
  }

  async function taskAction(action, body = {}) {
    try {
      current.task = await api(`/api/v1/tasks/${current.task.task_id}/${action}`, { method: "POST", body });
      renderTaskPanel();
      await loadTasks();
    } catch (e) { fail(e); }
  }

  function renderResult(view) {
    const box = $("command-result");
    box.classList.remove("hidden");
    const parts = [el("strong", {}, `${t(view.name)}: `)];
    if (view.status === "sent" || view.status === "accepted") parts.push(t("no_answer"));
    else parts.push(el("span", { class: view.status === "succeeded" ? "ok" : "error", id: "command-status" }, t(`cmd_${view.status}`)));
    if (view.reason) parts.push(el("div", { class: "muted" }, view.reason));
    const checks = view.result && view.result.checks;
    if (checks) {
      parts.push(el("div", {}, t(view.result.ok ? "diag_ok" : "diag_bad")),
        el("ul", { class: "list", id: "checks" }, checks.map((c) => el("li", {},
          el("span", { class: `badge ${c.status === "pass" ? "green" : c.status === "warn" ? "amber" : "red"}` }, c.status), " ",
          t(`chk_${c.key}`), ": ", HD.lang === "zh" ? c.detail_zh : c.detail_en,
          c.status !== "pass" && (c.hint_zh || c.hint_en) ? el("div", { class: "muted" }, "→ ", HD.lang === "zh" ? c.hint_zh : c.hint_en) : null))));
    }
    if (view.result && view.result.play_started_after_ms !== undefined) {
      parts.push(el("div", {}, `${view.result.text} · ${t("played_after")} ${view.result.play_started_after_ms} ms`));
    }
    fill(box, parts);
  }

  async function command(name) {
    if (!current) return;
    if (name === "reboot" && !window.confirm(t("reboot_confirm"))) return;
    const box = $("command-result");
    box.classList.remove("hidden");
    fill(box, t("sent_waiting"));
    document.querySelectorAll("#device-actions button").forEach((b) => { b.disabled = true; });
    try {
      renderResult(await api(`/api/v1/devices/${encodeURIComponent(current.device.device_id)}/commands`, { method: "POST", body: { name, wait_s: 20 } }));
    } catch (e) {
      fill(box, el("span", { class: "error" }, HD.errorText(e)));
    } finally {
      document.querySelectorAll("#device-actions button").forEach((b) => { b.disabled = false; });
    }
  }

  async function search(text) {
    const q = text.trim();
    if (!q) return;
    const found = await api(`/api/v1/devices?q=${encodeURIComponent(q)}&limit=5`);
    if (!found.length) { $("error").textContent = t("not_found"); return; }
    $("error").textContent = "";
    location.hash = `device=${encodeURIComponent(found[0].device_id)}`;
  }

  async function route() {
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("device")) return openDevice(hash.get("device"), null);
    if (hash.get("task")) {
      try {
        const task = await api(`/api/v1/tasks/${encodeURIComponent(hash.get("task"))}`);
        return openDevice(task.device_id, task);
      } catch (e) { return fail(e); }
    }
    $("device-card").classList.add("hidden");
    current = null;
    return null;
  }

  function setUpScanner() {
    // Phones with a camera and the Barcode Detection API scan the serial's QR or bar code.
    HDInstall.scanInto($("scan"), $("camera"), (code) => { $("search").value = code; search(code).catch(fail); });
  }

  document.addEventListener("DOMContentLoaded", async () => {
    if (!(await HD.start("agent_title", ["field-agent", "ops-admin"]))) return;
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search($("search").value).catch(fail); });
    $("close-card").addEventListener("click", () => { location.hash = ""; });
    document.querySelectorAll("#device-actions button").forEach((b) => b.addEventListener("click", () => command(b.dataset.command)));
    window.addEventListener("hashchange", () => route().catch(fail));
    document.addEventListener("hd:lang", () => { renderTasks(); route().catch(fail); });
    setUpScanner();
    HDInstall.setUp();
    $("swap-device").addEventListener("click", () => { if (current) HDInstall.mode(current.device.device_id); });
    $("return-device").addEventListener("click", () => { if (current) HDInstall.giveBack(current.device.device_id).then(() => route()).catch(fail); });
    document.addEventListener("hd:installed", () => { loadTasks().catch(fail); route().catch(fail); });
    if (navigator.geolocation) {
      navigator.geolocation.getCurrentPosition((p) => { here = { lat: p.coords.latitude, lon: p.coords.longitude }; renderTasks(); }, () => {}, { timeout: 10000, maximumAge: 60000 });
    }
    await Promise.all([loadTasks().catch(fail), route().catch(fail)]);
    document.body.dataset.ready = "1";
    setInterval(() => loadTasks().catch(fail), 30000);
  });
})();
