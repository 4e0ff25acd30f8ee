// Installing from the phone (装机), swapping a faulty device (换机) and taking one back (回收).
// Install: the serial typed or scanned, the merchant picked from the device's store or scanned
// from the sticker's QR code, confirm; the server binds the device (it says 设备绑定成功) and
// keeps the phone's position as its registered location; the page then sends a test
// announcement and, once it has played, closes the install (the device is in service). A swap
// is the same with the new device's serial, from the card of the one it replaces.
"use strict";

const HDInstall = (() => {
  const { el, fill, t, api } = HD;
  const $ = (id) => document.getElementById(id);
  HD.addStrings({
    install_title: "装机", swap_title: "换机", install_serial: "设备序列号", swap_serial: "新设备序列号",
    install_merchant: "商户", scan_merchant: "扫商户码", install_confirm: "确认装机", swap_confirm: "确认换机",
    swap_device: "换机", return_device: "回收设备", return_confirm: "确定回收这台设备？设备将解绑，未完成的工单将关闭。",
    step_bound: "已绑定商户，设备播报“设备绑定成功”", step_located: "装机位置已登记", step_no_position: "未取得手机定位，装机位置未登记",
    step_testing: "正在测试播报…", step_tested: "测试播报成功", step_done: "装机完成，设备在用", step_test_failed: "测试播报未成功：",
    step_retry: "重试测试播报", step_swapped: "旧设备已换下（已回收），工单已转到新设备", returned: "设备已回收",
    stage: "状态", no_merchants: "该门店没有商户", lookup_failed: "未找到该设备",
  }, {
    install_title: "Install", swap_title: "Swap device", install_serial: "Device serial", swap_serial: "New device's serial",
    install_merchant: "Merchant", scan_merchant: "Scan merchant code", install_confirm: "Install", swap_confirm: "Swap",
    swap_device: "Swap", return_device: "Take back", return_confirm: "Take this device back? It is unbound and its open tasks close.",
    step_bound: "Bound to the merchant; the device says 设备绑定成功", step_located: "Install position recorded", step_no_position: "No phone position: install position not recorded",
    step_testing: "Test announcement…", step_tested: "Test announcement played", step_done: "Installed: the device is in service", step_test_failed: "Test announcement did not play: ",
    step_retry: "Test again", step_swapped: "Old device swapped out (returned); its tasks moved to the new one", returned: "Device taken back",
    stage: "Stage", no_merchants: "No merchants in this store", lookup_failed: "No such device",
  });

  let swapping = null; // the device being replaced, in swap mode
  let found = null; // the device the serial names

  function position() {
    // The phone's position, if it gives one within 10 s; the install goes on without it.
    return new Promise((resolve) => {
      if (!navigator.geolocation) { resolve(null); return; }
      navigator.geolocation.getCurrentPosition(
        (p) => resolve({ lat: p.coords.latitude, lon: p.coords.longitude, accuracy_m: p.coords.accuracy }),
        () => resolve(null), { timeout: 10000, maximumAge: 60000, enableHighAccuracy: true });
    });
  }
  function step(key, extra = "", cls = "") { $("install-steps").append(el("li", { class: cls }, t(key), extra)); }

  async function lookUp() {
    const serial = $("install-serial").value.trim();
    found = null;
    if (!serial) { fill($("install-device"), ""); return; }
    try {
      found = await api(`/api/v1/lifecycle/devices/${encodeURIComponent(serial)}`);
    } catch (e) { fill($("install-device"), el("span", { class: "error" }, HD.errorText(e))); return; }
    fill($("install-device"), `${found.device_id} · ${found.model || ""} · ${t("stage")}: ${found.stage_zh}`);
    if (swapping) return;
    const merchants = await api(`/api/v1/lifecycle/merchants?store_id=${encodeURIComponent(found.store_id || "")}`);
    fill($("install-merchant"), merchants.length
      ? merchants.map((m) => el("option", { value: m.merchant_id }, `${m.name} (${m.merchant_id})`))
      : el("option", { value: "" }, t("no_merchants")));
  }

  async function testAndCommission(deviceId) {
    step("step_testing");
    const id = encodeURIComponent(deviceId);
    const view = await api(`/api/v1/devices/${id}/commands`, { method: "POST", body: { name: "test_announce", wait_s: 20 } });
    if (view.status !== "succeeded") {
      const retry = el("button", { type: "button", onclick: () => testAndCommission(deviceId).catch(fail) }, t("step_retry"));
      step("step_test_failed", view.reason || view.status, "error");
      $("install-steps").append(el("li", {}, retry));
      return;
    }
    step("step_tested");
    await api(`/api/v1/lifecycle/devices/${id}/commission`, { method: "POST", body: { command_id: view.command_id } });
    step("step_done", "", "ok");
    document.dispatchEvent(new CustomEvent("hd:installed", { detail: deviceId }));
  }

  function fail(e) { step("", HD.errorText(e), "error"); }

  async function confirm(event) {
    event.preventDefault();
    fill($("install-steps"), []);
    $("install-confirm").disabled = true;
    try {
      if (!found) await lookUp();
      if (!found) return;
      const where = await position();
      if (swapping) {
        const body = { new_device: found.device_id, ...(where || {}) };
        await api(`/api/v1/lifecycle/devices/${encodeURIComponent(swapping)}/swap`, { method: "POST", body });
        step("step_swapped");
      } else {
        const body = { merchant_id: $("install-merchant").value, ...(where || {}) };
        await api(`/api/v1/lifecycle/devices/${encodeURIComponent(found.device_id)}/install`, { method: "POST", body });
      }
      step("step_bound");
      step(where || swapping ? "step_located" : "step_no_position");
      await testAndCommission(found.device_id);
    } catch (e) { fail(e); } finally { $("install-confirm").disabled = false; }
  }

  function mode(old) {
    // Install (old null) or swap the device `old` for the one typed.
    swapping = old;
    found = null;
    $("install-title").textContent = t(old ? "swap_title" : "install_title");
    $("install-serial-label").textContent = t(old ? "swap_serial" : "install_serial");
    $("install-confirm").textContent = t(old ? "swap_confirm" : "install_confirm");
    $("install-merchant-field").classList.toggle("hidden", Boolean(old));
    $("install-cancel").classList.toggle("hidden", !old);
    $("install-serial").value = "";
    fill($("install-device"), old ? `${t("swap_device")}: ${old}` : "");
    fill($("install-steps"), []);
    if (old) $("install-card").scrollIntoView();
  }

  async function giveBack(deviceId) {
    if (!window.confirm(t("return_confirm"))) return;
    await api(`/api/v1/lifecycle/devices/${encodeURIComponent(deviceId)}/return`, { method: "POST", body: { note: "" } });
    document.dispatchEvent(new CustomEvent("hd:installed", { detail: deviceId }));
    window.alert(t("returned"));
  }

  function scanInto(button, video, apply) {
    // Phones with a camera and the Barcode Detection API scan the code; others type it.
    if (!("BarcodeDetector" in window) || !navigator.mediaDevices) return;
    button.classList.remove("hidden");
    button.addEventListener("click", async () => {
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
        video.srcObject = stream;
        video.classList.remove("hidden");
        await video.play();
        const detector = new window.BarcodeDetector();
        const tick = async () => {
          const codes = await detector.detect(video).catch(() => []);
          if (!codes.length) { requestAnimationFrame(tick); return; }
          stream.getTracks().forEach((track) => track.stop());
          video.classList.add("hidden");
          apply(codes[0].rawValue.trim());
        };
        tick();
      } catch (e) { fail(e); }
    });
  }

  function setUp() {
    $("install-form").addEventListener("submit", confirm);
    $("install-serial").addEventListener("change", () => lookUp().catch(fail));
    $("install-cancel").addEventListener("click", () => mode(null));
    scanInto($("install-scan"), $("install-camera"), (code) => { $("install-serial").value = code; lookUp().catch(fail); });
    // The merchant's sticker carries its merchant code (its id), as the backend printed it.
    scanInto($("install-scan-merchant"), $("install-camera"), (code) => {
      const select = $("install-merchant");
      if (![...select.options].some((o) => o.value === code)) select.append(el("option", { value: code }, code));
      select.value = code;
    });
    document.addEventListener("hd:lang", () => mode(swapping));
  }

  return { setUp, mode, giveBack, scanInto };
})();
