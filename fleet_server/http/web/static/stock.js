// The ops page's stock card: devices by store, agent and stage of their life (in stock,
// allocated, installed, in service, returned, in repair, scrapped, lost); for ops-admin, stock
// from the factory's packing list (CSV: device_id,serial,model; a dry run naming each bad row,
// then apply) and allocation of devices to a store. The API checks and audits every change.
"use strict";

(() => {
  const { el, fill, t, api } = HD;
  const $ = (id) => document.getElementById(id);
  const STAGES = ["in_stock", "allocated", "installed", "in_service", "returned", "in_repair", "scrapped", "lost"];
  HD.addStrings({
    stock_title: "设备库存与在用", stock_file: "入库 CSV", stock_dry: "试入库", stock_apply: "确认入库",
    allocate_devices: "设备号，逗号或换行分隔", allocate_store: "门店号", allocate: "下发",
    stock_report: "共 {rows} 行：可入库 {valid}，有误 {invalid}，已入库 {applied}，原已在库 {unchanged}",
    allocated_n: "已下发 {n} 台到 {store}", col_store: "门店", col_agent: "经纪人", stock_none: "暂无设备",
    stage_in_stock: "在库", stage_allocated: "已下发", stage_installed: "已装机", stage_in_service: "在用",
    stage_returned: "已回收", stage_in_repair: "返修中", stage_scrapped: "已报废", stage_lost: "已挂失",
    stock_devices: "台",
  }, {
    stock_title: "Stock and deployed devices", stock_file: "Stock CSV", stock_dry: "Dry run", stock_apply: "Put into stock",
    allocate_devices: "Device ids, comma or newline separated", allocate_store: "Store id", allocate: "Allocate",
    stock_report: "{rows} rows: {valid} valid, {invalid} with errors, {applied} stocked, {unchanged} in stock already",
    allocated_n: "{n} allocated to {store}", col_store: "Store", col_agent: "Agent", stock_none: "No devices",
    stage_in_stock: "In stock", stage_allocated: "Allocated", stage_installed: "Installed", stage_in_service: "In service",
    stage_returned: "Returned", stage_in_repair: "In repair", stage_scrapped: "Scrapped", stage_lost: "Lost",
    stock_devices: "devices",
  });
  const fail = (e) => { $("stock-report").textContent = HD.errorText(e); };
  let stockText = null;

  function labels() {
    $("stock-title").textContent = t("stock_title");
    $("stock-file-label").textContent = t("stock_file");
    $("stock-dry").textContent = t("stock_dry");
    $("stock-apply").textContent = t("stock_apply");
    $("allocate-devices").placeholder = t("allocate_devices");
    $("allocate-store").placeholder = t("allocate_store");
    $("allocate-submit").textContent = t("allocate");
  }

  async function counts() {
    const rows = await api("/api/v1/lifecycle/counts");
    const by = new Map();
    for (const r of rows) {
      const key = `${r.store_id || "-"}\u0000${r.agent_id || "-"}`;
      if (!by.has(key)) by.set(key, { store: r.store_id || "-", agent: r.agent_id || "-" });
      by.get(key)[r.stage] = r.devices;
    }
    const head = el("tr", {}, el("th", {}, t("col_store")), el("th", {}, t("col_agent")), STAGES.map((s) => el("th", {}, t(`stage_${s}`))));
    const body = [...by.values()].map((r) => el("tr", { "data-store": r.store },
      el("td", {}, r.store), el("td", {}, r.agent), STAGES.map((s) => el("td", { "data-stage": s }, String(r[s] || 0)))));
    const total = rows.reduce((n, r) => n + r.devices, 0);
    $("stock-total").textContent = `${total} ${t("stock_devices")}`;
    fill($("stock-counts"), el("thead", {}, head), el("tbody", {}, body.length ? body : el("tr", {}, el("td", { class: "muted" }, t("stock_none")))));
  }

  async function stock(dryRun) {
    const file = $("stock-file").files[0];
    if (!file) return;
    if (dryRun) stockText = await file.text();
    const report = await api(`/api/v1/lifecycle/stock?dry_run=${dryRun}`, { method: "POST", csv: stockText });
    $("stock-report").textContent = Object.entries(report).reduce((text, [k, v]) => text.replace(`{${k}}`, String(v)), t("stock_report"));
    fill($("stock-problems"), report.problems.slice(0, 50).map((p) => el("li", { class: "error" }, `#${p.line} ${p.device_id || ""}: ${p.errors.join("; ")}`)));
    $("stock-apply").classList.toggle("hidden", !dryRun || report.valid === 0);
    if (!dryRun) await counts();
  }

  async function allocate(event) {
    event.preventDefault();
    const ids = $("allocate-devices").value.split(/[\s,，]+/).filter(Boolean);
    const store = $("allocate-store").value.trim();
    try {
      const changes = await api("/api/v1/lifecycle/allocate", { method: "POST", body: { device_ids: ids, store_id: store } });
      $("allocate-report").textContent = t("allocated_n").replace("{n}", String(changes.length)).replace("{store}", store);
      await counts();
    } catch (e) { $("allocate-report").textContent = HD.errorText(e); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    // After HD.start (ops.js) has signed the page in: wait for its ready mark.
    const ready = () => {
      if (!HD.me) { setTimeout(ready, 50); return; }
      labels();
      counts().catch(fail);
      if (HD.me.permissions.includes("registry.write")) {
        $("stock-admin").classList.remove("hidden");
        $("stock-dry").addEventListener("click", () => stock(true).catch(fail));
        $("stock-apply").addEventListener("click", () => stock(false).catch(fail));
        $("allocate-form").addEventListener("submit", allocate);
      }
      document.addEventListener("hd:lang", () => { labels(); counts().catch(fail); });
      setInterval(() => counts().catch(fail), 30000);
    };
    ready();
  });
})();
