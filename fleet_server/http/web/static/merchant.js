// The merchant's page: my speakers, their volume / repeat / quiet hours (signed and sent to the
// device; "on the device" once its health report says it holds them), a test announcement,
// recent announcements played or missed, and payments no speaker could announce.
"use strict";

(() => {
  const { el, fill, t, api, time, yuan } = HD;
  const $ = (id) => document.getElementById(id);
  let devices = [];
  const fail = (e) => { if (e.status !== 401) $("error").textContent = HD.errorText(e); };

  function settingsForm(device, settings) {
    const id = device.device_id;
    const volume = el("input", { type: "range", min: 0, max: 10, value: settings.volume, id: `volume-${id}`, style: "width:100%" });
    const volumeText = el("span", {}, String(settings.volume));
    volume.addEventListener("input", () => { volumeText.textContent = volume.value; });
    const repeat = el("select", { id: `repeat-${id}` }, [1, 2, 3].map((n) => el("option", { value: n, selected: n === settings.repeat }, `${n} ${t("times")}`)));
    const quiet = settings.quiet_hours;
    const quietOn = el("input", { type: "checkbox", id: `quiet-on-${id}`, checked: Boolean(quiet) });
    const start = el("input", { type: "time", id: `quiet-start-${id}`, value: quiet ? quiet.start : "22:00" });
    const end = el("input", { type: "time", id: `quiet-end-${id}`, value: quiet ? quiet.end : "07:00" });
    const state = el("p", { class: settings.applied ? "ok" : "muted", id: `settings-state-${id}` },
      settings.version ? t(settings.applied ? "settings_applied" : "settings_saved_waiting") : "");
    const save = el("button", { class: "primary", id: `save-${id}`, onclick: async () => {
      save.disabled = true;
      try {
        const body = { volume: Number(volume.value), repeat: Number(repeat.value) };
        if (quietOn.checked) body.quiet_hours = { start: start.value, end: end.value };
        else body.clear_quiet_hours = true;
        const saved = await api(`/api/v1/devices/${encodeURIComponent(id)}/settings`, { method: "PUT", body });
        state.className = saved.applied ? "ok" : "muted";
        state.textContent = t(saved.applied ? "settings_applied" : "settings_saved_waiting");
        watch(id, state);
      } catch (e) { fail(e); } finally { save.disabled = false; }
    } }, t("save"));
    return el("div", {},
      el("label", { for: `volume-${id}` }, t("volume"), " ", volumeText), volume,
      el("label", { for: `repeat-${id}` }, t("repeat")), repeat,
      el("label", {}, quietOn, " ", t("quiet_on")),
      el("div", { class: "row" }, start, "–", end),
      el("div", { class: "row", style: "margin-top:10px" }, save,
        el("button", { id: `test-${id}`, onclick: () => testAnnounce(id) }, t("test_announce"))),
      el("div", { class: "result hidden", id: `result-${id}`, role: "status" }),
      state);
  }

  // After a change, look again until the device's health report says it holds the new version.
  function watch(id, state, tries = 20) {
    if (tries <= 0) return;
    setTimeout(async () => {
      try {
        const s = await api(`/api/v1/devices/${encodeURIComponent(id)}/settings`);
        if (s.applied) { state.className = "ok"; state.textContent = t("settings_applied"); } else watch(id, state, tries - 1);
      } catch (e) { fail(e); }
    }, 3000);
  }

  async function testAnnounce(id) {
    const box = $(`result-${id}`);
    box.classList.remove("hidden");
    fill(box, t("sent_waiting"));
    try {
      const view = await api(`/api/v1/devices/${encodeURIComponent(id)}/commands`, { method: "POST", body: { name: "test_announce", wait_s: 20 } });
      if (view.status === "succeeded") fill(box, el("span", { class: "ok" }, `${t("cmd_succeeded")}: ${view.result.text}`));
      else if (view.status === "sent" || view.status === "accepted") fill(box, t("no_answer"));
      else fill(box, el("span", { class: "error" }, `${t(`cmd_${view.status}`)} ${view.reason || ""}`));
    } catch (e) { fill(box, el("span", { class: "error" }, HD.errorText(e))); }
  }

  async function renderDevices() {
    devices = await api("/api/v1/devices?limit=100");
    const cards = await Promise.all(devices.map(async (d) => {
      const settings = await api(`/api/v1/devices/${encodeURIComponent(d.device_id)}/settings`);
      return el("section", { class: "card", "data-device": d.device_id },
        el("h2", {}, d.serial || d.device_id, el("span", { class: `badge ${d.online ? "green" : "red"}` }, d.online ? t("online") : t("offline"))),
        el("h3", {}, t("settings_title")), settingsForm(d, settings));
    }));
    fill($("devices"), cards.length ? cards : el("section", { class: "card muted" }, t("none")));
  }

  async function renderAnnouncements() {
    const lists = await Promise.all(devices.map((d) => api(`/api/v1/devices/${encodeURIComponent(d.device_id)}/announcements?limit=30`)
      .then((rows) => rows.map((r) => ({ ...r, device: d.serial || d.device_id })))));
    const rows = lists.flat().sort((a, b) => b.received_at.localeCompare(a.received_at)).slice(0, 40);
    fill($("announcements"), rows.length ? rows.map((r) => el("li", { class: "row", "data-heard": r.heard ? "1" : "0" },
      el("span", { class: "muted" }, time(r.received_at)), el("strong", {}, yuan(r.amount_fen)),
      r.kind === "refund" ? el("span", { class: "badge" }, t("kind_refund")) : t(`channel_${r.channel}`),
      el("span", { class: "muted" }, r.device), el("span", { class: "grow" }),
      el("span", { class: `badge ${r.heard ? "green" : r.status === "pending" ? "" : "red"}` }, t(`st_${r.status}`)))) : el("li", { class: "muted" }, t("none")));
  }

  async function renderNotAnnounced() {
    const rows = await api("/api/v1/payments/not-announced?limit=50");
    fill($("not-announced"), rows.length ? rows.map((r) => el("li", { class: "row" },
      el("span", { class: "muted" }, time(r.received_at)), el("strong", {}, yuan(r.amount_fen)), t(`channel_${r.channel}`),
      el("span", { class: "grow" }), el("span", { class: "badge red" }, r.reason ? t(`why_${r.reason}`) : "-"))) : el("li", { class: "muted" }, t("none")));
  }

  async function refresh() {
    await renderAnnouncements().catch(fail);
    await renderNotAnnounced().catch(fail);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    if (!(await HD.start("merchant_title", ["merchant"]))) return;
    document.addEventListener("hd:lang", () => { renderDevices().then(refresh).catch(fail); });
    await renderDevices().catch(fail);
    await refresh();
    document.body.dataset.ready = "1";
    setInterval(refresh, 15000);
  });
})();
