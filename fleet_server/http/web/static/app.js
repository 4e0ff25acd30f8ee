// 好店 pages: what every page shares. Language (zh-CN first, English one tap away), the API
// client (session cookie + CSRF token, a 401 goes back to sign-in), the header, formatting,
// and `el()`, which builds DOM from data without ever parsing it as HTML.
"use strict";

const HD = (() => {
  const STRINGS = {
    zh: {
      brand: "好店", lang_switch: "EN", logout: "退出", loading: "加载中…", updated: "更新于",
      retry: "重试", none: "暂无", save: "保存", cancel: "取消", back: "返回",
      login_title: "登录好店设备管理", login_name: "账号", login_password: "密码", login_submit: "登录",
      login_service: "服务账号没有网页，请使用 API 令牌。",
      ops_title: "运营看板", agent_title: "经纪人工作台", merchant_title: "我的收款音箱",
      figures: "设备指标（近24小时）", target: "目标", devices_by_state: "设备状态分布", trend: "趋势",
      period_24h: "24小时", period_7d: "7天", period_30d: "30天", drill: "分层钻取", whole_fleet: "全部",
      alerts: "告警与工单", campaigns: "OTA 升级",
      quarantine: "消息隔离 quarantined messages", quarantined: "条已隔离", col_messages: "消息数", col_last: "最近",
      import_title: "导入登记表 import the registry", import_file: "CSV 文件", dry_run: "试导入（不写入）", apply: "确认导入",
      import_report: "共 {rows} 行：有效 {valid}，无效 {invalid}，新增 {creates}，更新 {updates}，已写入 {applied}",
      accounts_title: "账号 accounts", acct_name: "姓名", acct_stores: "门店（逗号分隔）", acct_agent: "经纪人编号",
      acct_merchant: "商户编号", acct_add: "添加账号", col_role: "角色", acct_disabled: "已停用", acct_active: "启用中",
      disable: "停用", enable: "启用",
      audit_title: "审计日志 audit log", col_login: "账号", col_action: "操作", col_target: "对象", col_outcome: "结果",
      ops_tasks: "工单 tasks", open_count: "个未关闭", col_task: "工单", col_store: "门店", col_agent: "经纪人", col_due: "截止",
      assign: "指派", channels: "通知渠道 notification channels", col_channel_kind: "类型", col_scope: "范围",
      col_pending: "待发", col_last_sent: "最近发送", col_error: "错误", scope_fleet: "全部（运营）",
      storage: "数据存储 storage", storage_mode: "遥测存储", storage_retention: "保留天数", storage_compress: "压缩天数",
      storage_jobs_ok: "后台任务正常", storage_jobs_failing: "个后台任务失败", col_job: "任务", col_runs: "运行/失败",
      col_error: "错误", storage_no_jobs: "原生分区：没有后台任务",
      qreason_payload: "格式无效", qreason_store: "无法存储", qreason_signature: "签名无效", qreason_session: "过期会话", qreason_topic: "主题无效", no_charts: "图表库未安装（运行 ./dev demo 或 ./dev test 安装），以下仅显示数值。",
      devices: "设备数", online: "在线", offline: "离线", open_tasks: "未关闭工单",
      col_key: "名称", col_devices: "设备", col_intact: "完好率", col_avail: "可用率", col_delivery: "到达率",
      col_mtbf: "MTBF(h)", col_mttr: "MTTR(min)", col_power: "开机率", col_state: "状态", col_progress: "进度",
      col_release: "版本", col_actions: "操作", col_time: "时间", col_amount: "金额", col_channel: "渠道",
      col_result: "结果", col_device: "设备", col_reason: "原因",
      pause: "暂停", resume: "继续", abort: "终止",
      level_city: "城市", level_district: "商圈", level_store: "门店", level_merchant: "商户", level_device: "设备",
      my_tasks: "我的工单（由近到远）", my_tasks_newest: "我的工单（最新在前）", search_ph: "序列号或设备号", search: "搜索", scan: "扫码",
      not_found: "没有找到设备", device: "设备", state: "状态", signal: "信号", firmware: "固件", last_seen: "最后在线",
      last_announcement: "最近播报", recent_faults: "近期故障", timeline: "时间线", address: "安装地址",
      diagnose: "远程诊断", test_announce: "测试播报", reboot: "重启设备", reboot_confirm: "确定重启这台设备吗？",
      running: "执行中…", sent_waiting: "已发出，等待设备应答…", no_answer: "设备暂未应答（可能离线），稍后在时间线查看结果",
      cmd_succeeded: "成功", cmd_failed: "失败", cmd_refused: "被设备拒绝", cmd_duplicate: "重复指令",
      diag_ok: "全部通过", diag_bad: "有项目未通过", played_after: "开始播放，用时",
      task: "工单", start_work: "开始处理", close_task: "完成工单", close_note: "处理说明",
      verifying_note: "已提交，等待系统验证设备恢复后自动关闭",
      merchant: "商户", contact: "联系人", call: "拨打", map: "导航", due: "截止", escalated: "已超时升级",
      notes: "备注", add_note: "添加备注", cancel_task: "取消工单", cancel_reason: "取消原因",
      cr_false_alarm: "误报", cr_duplicate: "重复", cr_merchant_closed: "商户停业", cr_other: "其他", cancelled: "已取消",
      kind_faulty: "故障", kind_lost: "遗失", kind_relocated: "移机", kind_idle: "停用", kind_clock: "时钟", kind_degraded: "待维护",
      clock: "时钟", clock_ok: "准确", clock_fast: "快", clock_slow: "慢", clock_seconds: "秒", clock_corrected: "已校正，来源",
      clock_refused: "曾因时钟被拒绝连接", clock_src_server: "服务器时间", clock_src_modem: "基站时间", clock_src_ntp: "NTP",
      clock_src_system: "系统 NTP", clocks_off: "时钟异常",
      ts_open: "待处理", ts_in_progress: "处理中", ts_verifying: "待系统验证", ts_closed: "已关闭",
      km: "公里", m: "米",
      volume: "音量", repeat: "播报次数", quiet_hours: "免打扰时段", quiet_on: "启用免打扰",
      settings_saved_waiting: "已保存，等待设备确认", settings_applied: "设备已生效", settings_title: "播报设置",
      recent_announcements: "最近播报", not_announced: "未能播报的收款", heard: "已播报", missed: "未播报",
      times: "次", channel_alipay: "支付宝", channel_wechat: "微信", channel_unionpay: "云闪付", channel_other: "其他",
      st_played: "已播报", st_pending: "等待中", st_missed: "未送达", st_refused: "被拒绝", st_failed: "喇叭故障",
      st_silenced: "免打扰", st_duplicate: "已播报", st_expired: "已过期",
      why_no_bound_device: "没有绑定音箱", why_unknown_merchant: "未找到商户", why_missed: "音箱未收到",
      why_expired: "已过期", why_refused: "音箱拒绝", why_failed: "喇叭故障", why_stale: "付款时间过久，未播报",
      kind_refund: "退款",
      fig_intact_rate: "完好率", fig_fault_rate_per_hour: "故障率(/h)", fig_availability_calendar: "可用率(全天)",
      fig_availability_business: "可用率(营业)", fig_mtbf_h: "MTBF(小时)", fig_mttr_min: "MTTR(分钟)",
      fig_power_on_rate: "开机率", fig_delivery_rate: "播报到达率", fig_ota_success_rate: "OTA成功率",
      chk_agent: "播报程序", chk_power: "电源", chk_storage: "存储", chk_audio: "喇叭", chk_tts: "TTS 芯片",
      chk_printer: "打印机", chk_modem: "4G 模块", chk_sim: "SIM 卡", chk_signal: "信号", chk_broker: "服务器连接",
      chk_clock: "时钟", chk_last_announcement: "最近播报",
      ota_committed: "已完成", ota_failed: "失败", ota_targeted: "目标设备",
      state_in_service: "在用", state_offline: "离线", state_faulty: "故障", state_under_repair: "维修中",
      state_idle: "停用", state_suspected_lost: "疑似遗失", state_relocated: "移机", state_retired: "退役",
      camp_running: "进行中", camp_paused: "已暂停", camp_completed: "已完成", camp_aborted: "已终止",
      device_timeline_hint: "点击设备查看时间线", back_to_fleet: "返回全部",
    },
    en: {
      brand: "Haodian", lang_switch: "中文", logout: "Sign out", loading: "Loading…", updated: "Updated",
      retry: "Retry", none: "None", save: "Save", cancel: "Cancel", back: "Back",
      login_title: "Sign in to Haodian fleet", login_name: "Login", login_password: "Password", login_submit: "Sign in",
      login_service: "Service accounts have no page; use an API token.",
      ops_title: "Operations dashboard", agent_title: "Field agent", merchant_title: "My payment speakers",
      figures: "Fleet figures (last 24 h)", target: "target", devices_by_state: "Devices by state", trend: "Trend",
      period_24h: "24 h", period_7d: "7 d", period_30d: "30 d", drill: "Drill down", whole_fleet: "Fleet",
      alerts: "Alerts and tasks", campaigns: "OTA campaigns",
      quarantine: "Quarantined messages 消息隔离", quarantined: "held", col_messages: "Messages", col_last: "Last",
      import_title: "Import the registry 导入登记表", import_file: "CSV file", dry_run: "Dry run (writes nothing)", apply: "Apply",
      import_report: "{rows} rows: {valid} valid, {invalid} invalid, {creates} new, {updates} updated, {applied} applied",
      accounts_title: "Accounts 账号", acct_name: "Name", acct_stores: "Stores (comma-separated)", acct_agent: "Agent id",
      acct_merchant: "Merchant id", acct_add: "Add account", col_role: "Role", acct_disabled: "disabled", acct_active: "active",
      disable: "Disable", enable: "Enable",
      audit_title: "Audit log 审计日志", col_login: "Login", col_action: "Action", col_target: "Target", col_outcome: "Outcome",
      ops_tasks: "Tasks 工单", open_count: "open", col_task: "Task", col_store: "Store", col_agent: "Agent", col_due: "Due",
      assign: "Assign", channels: "Notification channels 通知渠道", col_channel_kind: "Kind", col_scope: "Scope",
      col_pending: "Pending", col_last_sent: "Last sent", col_error: "Error", scope_fleet: "Fleet (ops)",
      storage: "Storage 数据存储", storage_mode: "Telemetry storage", storage_retention: "Retention (days)", storage_compress: "Compressed after (days)",
      storage_jobs_ok: "background jobs OK", storage_jobs_failing: "background jobs failing", col_job: "Job", col_runs: "Runs / failures",
      col_error: "Error", storage_no_jobs: "Native partitions: no background jobs",
      qreason_payload: "invalid", qreason_store: "cannot be stored", qreason_signature: "bad signature", qreason_session: "stale session", qreason_topic: "bad topic", no_charts: "Charting library not installed (run ./dev demo or ./dev test); figures only.",
      devices: "Devices", online: "online", offline: "offline", open_tasks: "Open tasks",
      col_key: "Name", col_devices: "Devices", col_intact: "Intact", col_avail: "Availability", col_delivery: "Delivery",
      col_mtbf: "MTBF (h)", col_mttr: "MTTR (min)", col_power: "Power-on", col_state: "State", col_progress: "Progress",
      col_release: "Release", col_actions: "Actions", col_time: "Time", col_amount: "Amount", col_channel: "Channel",
      col_result: "Result", col_device: "Device", col_reason: "Reason",
      pause: "Pause", resume: "Resume", abort: "Abort",
      level_city: "City", level_district: "District", level_store: "Store", level_merchant: "Merchant", level_device: "Device",
      my_tasks: "My tasks (nearest first)", my_tasks_newest: "My tasks (newest first)", search_ph: "Serial or device id", search: "Search", scan: "Scan",
      not_found: "No such device", device: "Device", state: "State", signal: "Signal", firmware: "Firmware", last_seen: "Last seen",
      last_announcement: "Last announcement", recent_faults: "Recent faults", timeline: "Timeline", address: "Installed at",
      diagnose: "Run diagnostics", test_announce: "Test announcement", reboot: "Reboot", reboot_confirm: "Reboot this device?",
      running: "Running…", sent_waiting: "Sent, waiting for the device…", no_answer: "No answer yet (offline?); the timeline will show the result",
      cmd_succeeded: "Succeeded", cmd_failed: "Failed", cmd_refused: "Refused by the device", cmd_duplicate: "Duplicate",
      diag_ok: "All checks passed", diag_bad: "Some checks failed", played_after: "started playing after",
      task: "Task", start_work: "Start work", close_task: "Close task", close_note: "What was done",
      verifying_note: "Sent; closes once the system sees the device healthy again",
      merchant: "Merchant", contact: "Contact", call: "Call", map: "Map", due: "Due", escalated: "overdue, escalated",
      notes: "Notes", add_note: "Add note", cancel_task: "Cancel task", cancel_reason: "Reason",
      cr_false_alarm: "False alarm", cr_duplicate: "Duplicate", cr_merchant_closed: "Merchant closed", cr_other: "Other", cancelled: "Cancelled",
      kind_faulty: "Faulty", kind_lost: "Lost", kind_relocated: "Moved", kind_idle: "Idle", kind_clock: "Clock", kind_degraded: "Maintenance",
      clock: "Clock", clock_ok: "right", clock_fast: "fast", clock_slow: "slow", clock_seconds: "s", clock_corrected: "corrected from",
      clock_refused: "refused for its clock at", clock_src_server: "server time", clock_src_modem: "network time", clock_src_ntp: "NTP",
      clock_src_system: "system NTP", clocks_off: "clocks off",
      ts_open: "Open", ts_in_progress: "In progress", ts_verifying: "Verifying", ts_closed: "Closed",
      km: "km", m: "m",
      volume: "Volume", repeat: "Repeat", quiet_hours: "Quiet hours", quiet_on: "Quiet hours on",
      settings_saved_waiting: "Saved; waiting for the device", settings_applied: "On the device", settings_title: "Announcement settings",
      recent_announcements: "Recent announcements", not_announced: "Payments not announced", heard: "Played", missed: "Missed",
      times: "×", channel_alipay: "Alipay", channel_wechat: "WeChat Pay", channel_unionpay: "UnionPay", channel_other: "Other",
      st_played: "Played", st_pending: "Pending", st_missed: "Not delivered", st_refused: "Refused", st_failed: "Speaker fault",
      st_silenced: "Quiet hours", st_duplicate: "Played", st_expired: "Expired",
      why_no_bound_device: "No speaker bound", why_unknown_merchant: "Merchant not found", why_missed: "Speaker did not get it",
      why_expired: "Expired", why_refused: "Refused by the speaker", why_failed: "Speaker fault", why_stale: "Paid too long ago to announce",
      kind_refund: "Refund",
      fig_intact_rate: "Intact rate", fig_fault_rate_per_hour: "Faults per hour", fig_availability_calendar: "Availability (24 h)",
      fig_availability_business: "Availability (business)", fig_mtbf_h: "MTBF (h)", fig_mttr_min: "MTTR (min)",
      fig_power_on_rate: "Power-on rate", fig_delivery_rate: "Announcement delivery", fig_ota_success_rate: "OTA success",
      chk_agent: "Agent", chk_power: "Power", chk_storage: "Storage", chk_audio: "Speaker", chk_tts: "TTS chip",
      chk_printer: "Printer", chk_modem: "4G modem", chk_sim: "SIM card", chk_signal: "Signal", chk_broker: "Broker",
      chk_clock: "Clock", chk_last_announcement: "Last announcement",
      ota_committed: "committed", ota_failed: "failed", ota_targeted: "targeted",
      state_in_service: "In service", state_offline: "Offline", state_faulty: "Faulty", state_under_repair: "Under repair",
      state_idle: "Idle", state_suspected_lost: "Suspected lost", state_relocated: "Moved", state_retired: "Retired",
      camp_running: "Running", camp_paused: "Paused", camp_completed: "Completed", camp_aborted: "Aborted",
      device_timeline_hint: "Tap a device for its timeline", back_to_fleet: "Back to fleet",
    },
  };
  const HOME = { "ops-admin": "/ops", "ops-viewer": "/ops", "field-agent": "/agent", merchant: "/merchant" };
  let lang = localStorage.getItem("hd_lang") === "en" ? "en" : "zh";
  let me = null;

  function addStrings(zh, en) {
    // A page's own strings (the install flow's, say), beside the shared ones.
    Object.assign(STRINGS.zh, zh);
    Object.assign(STRINGS.en, en);
  }
  function t(key) {
    const text = STRINGS[lang][key];
    return text === undefined ? key : text;
  }
  function applyI18n(root = document) {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    root.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
    root.querySelectorAll("[data-i18n-ph]").forEach((node) => { node.placeholder = t(node.dataset.i18nPh); });
  }
  function setLang(next) {
    lang = next;
    localStorage.setItem("hd_lang", next);
    applyI18n();
    document.dispatchEvent(new CustomEvent("hd:lang"));
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(`HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }
  async function api(path, { method = "GET", body, csv, redirect = true } = {}) {
    // `body` goes as JSON; `csv`, text as it is (a registry file).
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (csv !== undefined) headers["content-type"] = "text/csv; charset=utf-8";
    if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf;
    const payload = csv !== undefined ? csv : body === undefined ? undefined : JSON.stringify(body);
    const response = await fetch(path, { method, headers, credentials: "same-origin", body: payload });
    if (response.status === 401 && redirect) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.hash);
      throw new ApiError(401, null);
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
  function errorText(error) {
    if (error instanceof ApiError && error.body && error.body.error) {
      return lang === "zh" ? error.body.error.message_zh : error.body.error.message;
    }
    return String((error && error.message) || error);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "style") node.setAttribute("style", value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat()) {
      if (child !== undefined && child !== null && child !== false) node.append(child instanceof Node ? child : String(child));
    }
  }

  const pct = (v, digits = 2) => (v === null || v === undefined ? "-" : `${(v * 100).toFixed(digits)}%`);
  const num = (v, digits = 1) => (v === null || v === undefined ? "-" : Number(v).toLocaleString(lang === "zh" ? "zh-CN" : "en", { maximumFractionDigits: digits }));
  const yuan = (fen) => `¥${(fen / 100).toFixed(2)}`;
  function time(iso) {
    if (!iso) return "-";
    const d = new Date(iso);
    return d.toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }
  function figure(name, value) {
    if (value === null || value === undefined) return "-";
    if (name === "fault_rate_per_hour") return Number(value).toExponential(2);
    if (name === "mtbf_h" || name === "mttr_min") return num(value, 1);
    return pct(value, name === "intact_rate" || name === "power_on_rate" ? 2 : 3);
  }

  function header(titleKey) {
    const bar = document.querySelector("header.bar");
    fill(bar,
      el("h1", {}, el("span", { "data-i18n": "brand" }), " · ", el("span", { "data-i18n": titleKey })),
      el("span", { class: "who", id: "who" }, me ? `${me.name} · ${lang === "zh" ? me.role_zh : me.role}` : ""),
      el("button", { id: "lang", class: "small", onclick: () => setLang(lang === "zh" ? "en" : "zh"), "data-i18n": "lang_switch" }),
      me ? el("button", { id: "logout", class: "small", "data-i18n": "logout", onclick: logout }) : null,
    );
    document.addEventListener("hd:lang", () => {
      const who = document.getElementById("who");
      if (who && me) who.textContent = `${me.name} · ${lang === "zh" ? me.role_zh : me.role}`;
    });
    applyI18n();
  }
  async function logout() {
    try { await api("/api/v1/auth/logout", { method: "POST", redirect: false }); } catch (_) { /* signed out anyway */ }
    location.href = "/login";
  }
  // Sign-in check for a page: the account, if its role belongs here; otherwise off to its own page.
  async function start(titleKey, roles) {
    me = await api("/api/v1/auth/me");
    if (!roles.includes(me.role)) {
      location.href = HOME[me.role] || "/login";
      return null;
    }
    header(titleKey);
    return me;
  }

  // How far the board's clock is off and what corrected it; a refusal for the clock if it came last.
  function clockText(c) {
    const parts = [];
    const off = c.board_offset_ms == null ? null : Math.round(-c.board_offset_ms / 1000);
    if (off === null || Math.abs(off) <= 60) parts.push(t("clock_ok"));
    else parts.push(`${t(off > 0 ? "clock_fast" : "clock_slow")} ${Math.abs(off)} ${t("clock_seconds")}`);
    const known = t(`clock_src_${c.source}`);
    const source = known === `clock_src_${c.source}` ? c.source : known;  // "saved (server)" and the like as they come
    if (c.source && off !== null && Math.abs(off) > 60) parts.push(`${t("clock_corrected")} ${source}`);
    if (c.refused_at && (!c.reported_at || c.refused_at > c.reported_at)) parts.push(`${t("clock_refused")} ${time(c.refused_at)}`);
    return parts.join(" · ");
  }

  return {
    clockText, t, addStrings, applyI18n, setLang, api, ApiError, errorText, el, fill, pct, num, yuan, time, figure, header, start, HOME,
    get lang() { return lang; }, get me() { return me; }, set me(value) { me = value; },
  };
})();
