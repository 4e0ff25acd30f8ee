// The operations dashboard: figures against their targets, devices by state, trends, drill-down
// city → district → store → merchant → device, alerts and open tasks, OTA campaigns. Everything
// refreshes every 10 s; the charts are Apache ECharts, served by our own server.
"use strict";

(() => {
  const { el, fill, t, api, figure, pct, num, time } = HD;
  const REFRESH_MS = 10000;
  const LEVELS = ["city", "district", "store", "merchant", "device"];
  const TREND = ["availability_calendar", "intact_rate", "delivery_rate", "power_on_rate"];
  const charts = window.echarts ? {
    state: echarts.init(document.getElementById("state-chart")),
    trend: echarts.init(document.getElementById("trend-chart")),
  } : null;
  let period = "24h";
  let path = []; // [[level, key], ...] from the fleet down
  let last = {};

  const show = (fn) => fn().catch((e) => { if (e.status !== 401) document.getElementById("error").textContent = HD.errorText(e); });

  async function summary() {
    const s = await api("/api/v1/fleet/summary");
    last.summary = s;
    fill(document.getElementById("counts"),
      el("span", {}, `${t("devices")} ${s.devices}`), "·",
      el("span", { class: "ok" }, `${t("online")} ${s.online}`), "·",
      el("span", {}, `${t("open_tasks")} ${s.open_tasks}`),
      s.clocks_off ? ["·", el("span", { class: "warn", id: "clocks-off" }, `${t("clocks_off")} ${s.clocks_off}`)] : null);
    fill(document.getElementById("tiles"), s.tiles.map((tile) => el("div", { class: `tile ${tile.status}`, "data-figure": tile.name },
      el("div", { class: "label" }, t(`fig_${tile.name}`)),
      el("div", { class: "value" }, figure(tile.name, tile.value)),
      el("div", { class: "target" }, `${t("target")} ${figure(tile.name, tile.target)}`))));
    if (charts) {
      const states = Object.entries(s.now.by_state).sort((a, b) => b[1] - a[1]);
      charts.state.setOption({
        tooltip: { trigger: "item" },
        series: [{ type: "pie", radius: ["40%", "70%"], data: states.map(([k, v]) => ({ name: t(`state_${k}`), value: v })),
          label: { formatter: "{b} {c}" } }],
      }, true);
    }
    document.getElementById("updated").textContent = time(new Date().toISOString());
  }

  async function trend() {
    const points = await api(`/api/v1/figures/trend?period=${period}`);
    document.querySelectorAll("#periods button").forEach((b) => b.classList.toggle("primary", b.dataset.period === period));
    if (!charts) return;
    charts.trend.setOption({
      tooltip: { trigger: "axis", valueFormatter: (v) => (v === null || v === undefined ? "-" : `${(v * 100).toFixed(3)}%`) },
      legend: { top: 0, type: "scroll" },
      grid: { left: 50, right: 12, top: 36, bottom: 24 },
      xAxis: { type: "category", data: points.map((p) => p.label) },
      yAxis: { type: "value", scale: true, axisLabel: { formatter: (v) => `${(v * 100).toFixed(1)}%` } },
      series: TREND.map((name) => ({ name: t(`fig_${name}`), type: "line", symbolSize: 4, connectNulls: true,
        data: points.map((p) => p.figures[name]) })),
    }, true);
  }

  async function drill() {
    const level = LEVELS[Math.min(path.length, LEVELS.length - 1)];
    const scope = path.length ? `&scope=${encodeURIComponent(path[path.length - 1].join(":"))}` : "";
    const rows = await api(`/api/v1/figures?by=${level}${scope}`);
    const crumbs = [el("a", { onclick: () => { path = []; show(drill); } }, t("whole_fleet"))];
    path.forEach(([lvl, key], i) => crumbs.push(" › ", el("a", { onclick: () => { path = path.slice(0, i + 1); show(drill); } }, `${t(`level_${lvl}`)} ${key}`)));
    fill(document.getElementById("crumbs"), crumbs);
    const head = el("tr", {}, [t(`level_${level}`), t("col_devices"), t("col_intact"), t("col_avail"), t("col_delivery"),
      t("col_mtbf"), t("col_mttr"), t("col_power")].map((h) => el("th", {}, h)));
    const body = rows.map((r) => el("tr", { class: "link", "data-key": r.key || "", onclick: () => open(level, r.key) },
      el("td", {}, r.key || "-"), el("td", {}, r.devices), el("td", {}, pct(r.intact_rate)),
      el("td", {}, pct(r.availability_calendar, 3)), el("td", {}, pct(r.delivery_rate, 3)),
      el("td", {}, num(r.mtbf_h)), el("td", {}, num(r.mttr_min)), el("td", {}, pct(r.power_on_rate))));
    fill(document.getElementById("drill"), el("thead", {}, head), el("tbody", {}, body));
    if (level !== "device") fill(document.getElementById("device-panel"));
  }

  function open(level, key) {
    if (!key) return;
    if (level === "device") { show(() => device(key)); return; }
    path.push([level, key]);
    show(drill);
  }

  async function device(id) {
    const [d, timeline] = await Promise.all([
      api(`/api/v1/devices/${encodeURIComponent(id)}`),
      api(`/api/v1/devices/${encodeURIComponent(id)}/timeline?limit=30`),
    ]);
    fill(document.getElementById("device-panel"),
      el("h3", {}, `${t("device")} ${d.device_id} · ${d.serial || ""}`),
      el("dl", { class: "kv" },
        el("dt", {}, t("state")), el("dd", {}, HD.lang === "zh" ? d.state_zh || "-" : d.state || "-"),
        el("dt", {}, t("online")), el("dd", {}, d.online ? "✓" : "✗"),
        el("dt", {}, t("firmware")), el("dd", {}, d.firmware || "-"),
        el("dt", {}, t("last_seen")), el("dd", {}, time(d.last_seen)),
        d.clock ? [el("dt", {}, t("clock")), el("dd", { id: "device-clock" }, HD.clockText(d.clock))] : null),
      el("h3", {}, t("timeline")),
      el("ul", { class: "list", id: "device-timeline" }, timeline.entries.map((e) => el("li", {}, el("span", { class: "muted" }, time(e.at)), " ", e.kind, " · ", e.summary))));
  }

  async function alerts() {
    const list = await api("/api/v1/alerts");
    fill(document.getElementById("alerts"), list.length ? list.slice(0, 50).map((a) => el("li", {},
      el("span", { class: `badge ${a.severity === "task" ? "" : a.severity}` }, a.severity === "task" ? t("task") : a.severity), " ",
      HD.lang === "zh" ? a.message_zh : a.message)) : el("li", { class: "muted" }, t("none")));
  }

  async function campaigns() {
    const list = await api("/api/v1/ota/campaigns");
    const admin = HD.me.permissions.includes("ota.write");
    const head = el("tr", {}, [t("col_release"), t("col_state"), t("col_progress"), admin ? t("col_actions") : null].filter(Boolean).map((h) => el("th", {}, h)));
    const rows = list.slice(0, 20).map((c) => {
      const done = c.targeted ? c.committed / c.targeted : 0;
      const actions = [];
      if (admin && c.status === "running") actions.push(el("button", { class: "small", onclick: () => act(c.campaign_id, "pause") }, t("pause")));
      if (admin && c.status === "paused") actions.push(el("button", { class: "small", onclick: () => act(c.campaign_id, "resume") }, t("resume")));
      if (admin && (c.status === "running" || c.status === "paused")) actions.push(el("button", { class: "small warn", onclick: () => act(c.campaign_id, "abort") }, t("abort")));
      return el("tr", { "data-campaign": c.campaign_id },
        el("td", {}, `${c.release_name} ${c.version}`, el("div", { class: "muted" }, c.campaign_id)),
        el("td", {}, t(`camp_${c.status}`), c.status_reason ? el("div", { class: "muted" }, c.status_reason) : null),
        el("td", {}, el("div", { class: "progress" }, el("span", { style: `width:${(done * 100).toFixed(1)}%` })),
          el("div", { class: "muted" }, `${c.committed}/${c.targeted} ${t("ota_committed")}`)),
        admin ? el("td", {}, el("div", { class: "row" }, actions)) : null);
    });
    fill(document.getElementById("campaigns"), el("thead", {}, head), el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "muted" }, t("none")))));
  }

  async function quarantine() {
    // Messages no consumer could take (bad data, forged signatures): by consumer and reason,
    // and the devices that sent them in the last 24 h.
    const q = await api("/api/v1/quarantine/summary");
    document.getElementById("quarantine-total").textContent = `${q.total} ${t("quarantined")}`;
    fill(document.getElementById("quarantine-counts"), q.counts.map((c) =>
      el("span", { class: "badge" }, `${c.consumer} · ${t(`qreason_${c.reason}`)}: ${c.messages}`)));
    const head = el("tr", {}, [t("col_device"), t("col_messages"), t("col_reason"), t("col_last")].map((h) => el("th", {}, h)));
    const rows = q.devices.map((d) => el("tr", { "data-device": d.device_id },
      el("td", {}, d.device_id), el("td", {}, String(d.messages)),
      el("td", {}, d.reasons.map((r) => t(`qreason_${r}`)).join("、")), el("td", {}, time(d.last_at))));
    fill(document.getElementById("quarantine"), el("thead", {}, head), el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "muted" }, t("none")))));
  }

  let agents = null;

  async function opsTasks() {
    // The open tasks, overdue first; ops-admin gives one to another field agent from here (the
    // new agent's channels are told).
    const admin = HD.me.permissions.includes("task.assign");
    const list = await api("/api/v1/tasks?open_only=true&limit=100");
    if (admin && agents === null) agents = await api("/api/v1/registry/agents");
    document.getElementById("ops-tasks-total").textContent = `${list.length} ${t("open_count")}`;
    const now = Date.now();
    const overdue = (task) => task.due_at && Date.parse(task.due_at) <= now;
    list.sort((a, b) => Number(overdue(b)) - Number(overdue(a)) || (a.due_at || "").localeCompare(b.due_at || ""));
    const head = el("tr", {}, [t("col_task"), t("col_device"), t("col_store"), t("col_agent"), t("col_state"), t("col_due"), admin ? t("col_actions") : null]
      .filter(Boolean).map((h) => el("th", {}, h)));
    const rows = list.map((task) => {
      let actions = null;
      if (admin) {
        const pick = el("select", { class: "assign-agent" }, agents.map((a) =>
          el("option", { value: a.agent_id, ...(a.agent_id === task.agent_id ? { selected: "selected" } : {}) }, `${a.name} (${a.agent_id})`)));
        actions = el("td", {}, el("div", { class: "row" }, pick, el("button", { class: "small assign", onclick: () => assign(task.task_id, pick.value) }, t("assign"))));
      }
      return el("tr", { "data-task": String(task.task_id) },
        el("td", {}, `#${task.task_id} ${t(`kind_${task.kind}`)}`),
        el("td", {}, task.serial || task.device_id), el("td", {}, task.store_id || "-"),
        el("td", { class: "task-agent" }, task.agent_id || "-"), el("td", {}, t(`ts_${task.status}`)),
        el("td", { class: overdue(task) ? "error" : "" }, task.due_at ? time(task.due_at) : "-"), actions);
    });
    fill(document.getElementById("ops-tasks"), el("thead", {}, head), el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "muted" }, t("none")))));
  }

  async function assign(taskId, agentId) {
    await show(async () => { await api(`/api/v1/tasks/${taskId}/assign`, { method: "POST", body: { agent_id: agentId } }); await opsTasks(); });
  }

  // The registry from a CSV file: a dry run first (each bad row with its line and why), then
  // apply the same file. ops-admin only (registry.write); every apply is audited.
  let importText = null;

  async function importRegistry(dryRun) {
    const file = document.getElementById("import-file").files[0];
    if (!file) return;
    if (dryRun) importText = await file.text();
    const report = await api(`/api/v1/registry/import?dry_run=${dryRun}`, { method: "POST", csv: importText });
    document.getElementById("import-report").textContent = Object.entries(report).reduce(
      (text, [key, value]) => text.replace(`{${key}}`, String(value)), t("import_report"));
    fill(document.getElementById("import-problems"), report.problems.slice(0, 50).map((p) =>
      el("li", { class: "error" }, `#${p.line} ${p.device_id || ""}: ${p.errors.join("; ")}`)));
    document.getElementById("import-apply").classList.toggle("hidden", !dryRun || report.valid === 0);
    if (!dryRun) await Promise.all([show(opsTasks), show(audit)]);
  }

  async function accounts() {
    // Accounts, for ops-admin (users.admin): who may sign in, in which role and reach; disabling
    // one ends its sign-ins. Every change is audited by the API.
    const list = await api("/api/v1/users");
    const head = el("tr", {}, ["col_login", "acct_name", "col_role", "col_scope", "col_state", "col_actions"].map((h) => el("th", {}, t(h))));
    const rows = list.map((u) => el("tr", { "data-login": u.login }, el("td", {}, u.login), el("td", {}, u.name || "-"), el("td", {}, u.role),
      el("td", {}, [u.merchant_id, u.agent_id, u.stores.join(", ")].filter(Boolean).join(" · ") || "-"),
      el("td", { class: "acct-state" }, u.disabled ? el("span", { class: "badge red" }, t("acct_disabled")) : t("acct_active")),
      el("td", {}, u.login === HD.me.login ? null : el("button", { class: "small acct-toggle", onclick: () => setDisabled(u.login, !u.disabled) },
        u.disabled ? t("enable") : t("disable")))));
    fill(document.getElementById("accounts"), el("thead", {}, head), el("tbody", {}, rows));
  }

  async function setDisabled(login, disabled) {
    await show(async () => { await api(`/api/v1/users/${encodeURIComponent(login)}`, { method: "PATCH", body: { disabled } }); await accounts(); await audit(); });
  }

  async function addAccount(event) {
    event.preventDefault();
    const value = (id) => document.getElementById(id).value.trim();
    const body = { login: value("acct-login"), name: value("acct-name"), role: value("acct-role"),
      stores: value("acct-stores").split(/[,，\s]+/).filter(Boolean) };
    if (value("acct-password")) body.password = value("acct-password");
    if (value("acct-agent")) body.agent_id = value("acct-agent");
    if (value("acct-merchant")) body.merchant_id = value("acct-merchant");
    await show(async () => {
      await api("/api/v1/users", { method: "POST", body });
      document.getElementById("new-account").reset();
      await accounts(); await audit();
    });
  }

  async function audit() {
    const list = await api("/api/v1/audit?limit=30");
    const head = el("tr", {}, ["col_time", "col_login", "col_action", "col_target", "col_outcome"].map((h) => el("th", {}, t(h))));
    const rows = list.map((e) => el("tr", { "data-audit": String(e.audit_id) }, el("td", {}, time(e.at)), el("td", {}, e.login),
      el("td", {}, e.action), el("td", {}, e.target), el("td", { class: e.outcome === "ok" ? "" : "error" }, e.outcome)));
    fill(document.getElementById("audit"), el("thead", {}, head), el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "muted" }, t("none")))));
  }

  async function channels() {
    const list = await api("/api/v1/notify/channels");
    const head = el("tr", {}, ["col_key", "col_channel_kind", "col_scope", "col_pending", "col_last_sent", "col_error"].map((h) => el("th", {}, t(h))));
    const rows = list.map((c) => el("tr", { "data-channel": String(c.channel_id) },
      el("td", {}, c.name, el("div", { class: "muted" }, c.shown)), el("td", {}, c.kind),
      el("td", {}, c.store_id || c.agent_id || t("scope_fleet")),
      el("td", {}, String(c.pending), c.given_up ? el("span", { class: "badge red" }, ` ${c.given_up}`) : null),
      el("td", {}, c.last_sent_at ? time(c.last_sent_at) : "-"), el("td", { class: c.last_error ? "error" : "" }, c.last_error || "")));
    fill(document.getElementById("channels"), el("thead", {}, head), el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "muted" }, t("none")))));
  }

  async function storage() {
    // The telemetry storage in use and why; with TimescaleDB its background jobs (compression,
    // retention), the failing ones first, with the server's error.
    const s = await api("/api/v1/storage");
    const failing = s.jobs.filter((j) => j.last_run_status === "Failed");
    const state = document.getElementById("storage-state");
    state.textContent = s.jobs.length ? (failing.length ? `${failing.length} ${t("storage_jobs_failing")}` : t("storage_jobs_ok")) : "";
    state.className = failing.length ? "badge red" : "muted";
    fill(document.getElementById("storage-facts"),
      el("span", { class: "badge" }, `${t("storage_mode")}: ${s.mode}`), el("span", {}, s.reason),
      el("span", { class: "badge" }, `${t("storage_retention")}: ${s.retention_days}`),
      s.compress_after_days === null ? null : el("span", { class: "badge" }, `${t("storage_compress")}: ${s.compress_after_days}`));
    const lastError = (job) => s.errors.find((e) => e.job_id === job.job_id);
    const head = el("tr", {}, [t("col_job"), t("col_state"), t("col_runs"), t("col_last"), t("col_error")].map((h) => el("th", {}, h)));
    const jobs = [...failing, ...s.jobs.filter((j) => j.last_run_status !== "Failed")];
    const rows = jobs.map((j) => el("tr", { "data-job": String(j.job_id) },
      el("td", {}, `${j.proc} ${j.hypertable}`, el("div", { class: "muted" }, `#${j.job_id}`)),
      el("td", {}, el("span", { class: `badge ${j.last_run_status === "Failed" ? "red" : ""}` }, j.last_run_status)),
      el("td", {}, `${j.total_runs} / ${j.total_failures}`), el("td", {}, j.last_run_started_at ? time(j.last_run_started_at) : "-"),
      el("td", {}, lastError(j) ? `${lastError(j).sqlerrcode} ${lastError(j).message}` : "")));
    const empty = el("tr", {}, el("td", { class: "muted" }, t("storage_no_jobs")));
    fill(document.getElementById("storage-jobs"), el("thead", {}, head), el("tbody", {}, rows.length ? rows : empty));
  }

  async function act(id, action) {
    await show(async () => { await api(`/api/v1/ota/campaigns/${encodeURIComponent(id)}/${action}`, { method: "POST" }); await campaigns(); });
  }

  async function refresh() {
    await Promise.all([show(summary), show(alerts), show(campaigns), show(quarantine), show(storage), show(opsTasks), show(channels),
      HD.me.permissions.includes("audit.read") ? show(audit) : null]);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    if (!(await HD.start("ops_title", ["ops-admin", "ops-viewer"]))) return;
    if (!charts) document.getElementById("no-charts").classList.remove("hidden");
    if (HD.me.permissions.includes("registry.write")) {
      document.getElementById("import-card").classList.remove("hidden");
      document.getElementById("import-dry").addEventListener("click", () => show(() => importRegistry(true)));
      document.getElementById("import-apply").addEventListener("click", () => show(() => importRegistry(false)));
    }
    if (HD.me.permissions.includes("audit.read")) document.getElementById("audit-card").classList.remove("hidden");
    if (HD.me.permissions.includes("users.admin")) {
      document.getElementById("accounts-card").classList.remove("hidden");
      document.getElementById("new-account").addEventListener("submit", addAccount);
      show(accounts);
    }
    document.querySelectorAll("#periods button").forEach((b) => b.addEventListener("click", () => { period = b.dataset.period; show(trend); }));
    document.addEventListener("hd:lang", () => { refresh(); show(trend); show(drill); });
    window.addEventListener("resize", () => charts && Object.values(charts).forEach((c) => c.resize()));
    await Promise.all([refresh(), show(trend), show(drill)]);
    document.body.dataset.ready = "1";
    setInterval(refresh, REFRESH_MS);
    setInterval(() => show(trend), REFRESH_MS * 6);
  });
})();
